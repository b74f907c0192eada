output "bootstrap_servers" {
  description = "Give this to Kafka clients as bootstrap.servers."
  value       = module.strata.bootstrap_servers
}

output "store_url" {
  description = "The bucket and prefix holding the log."
  value       = module.strata.store_url
}

output "controllers" {
  description = "The Raft voters (for `strata voters --raft <ip>:9093`)."
  value       = module.strata.controllers
}

output "autoscaling_group_name" {
  description = "The brokers' autoscaling group."
  value       = module.strata.autoscaling_group_name
}

output "cluster_secret_parameter_name" {
  description = "SSM parameter (its name, not the value) holding the Raft port's cluster secret."
  value       = module.strata.cluster_secret_parameter_name
}

output "admin_password_parameter_name" {
  description = "With sasl_mechanisms: SSM parameter (its name, not the value) holding the admin's password."
  value       = module.strata.admin_password_parameter_name
}
