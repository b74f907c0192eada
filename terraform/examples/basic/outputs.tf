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
