output "bucket_name" {
  description = "The bucket that holds the log and the shipped metadata."
  value       = aws_s3_bucket.log.bucket
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.log.arn
}

output "store_url" {
  description = "The --store URL every broker uses."
  value       = local.store_url
}

output "bootstrap_servers" {
  description = "bootstrap.servers for Kafka clients (the NLB). After bootstrapping, clients connect to each broker's private address."
  value       = "${aws_lb.kafka.dns_name}:${var.kafka_port}"
}

output "nlb_dns_name" {
  description = "DNS name of the NLB."
  value       = aws_lb.kafka.dns_name
}

output "controllers" {
  description = "The --controllers value: the Raft voters."
  value       = local.controllers
}

output "controller_private_ips" {
  description = "Fixed private IPs of the controllers (node ids 1..N in this order)."
  value       = local.controller_ips
}

output "controller_instance_ids" {
  description = "Instance ids of the controllers."
  value       = aws_instance.controller[*].id
}

output "autoscaling_group_name" {
  description = "The brokers' autoscaling group."
  value       = aws_autoscaling_group.broker.name
}

output "broker_security_group_id" {
  description = "Security group of controllers and brokers (add rules to it, e.g. for more client CIDRs)."
  value       = aws_security_group.broker.id
}

output "iam_role_arn" {
  description = "The instances' IAM role."
  value       = aws_iam_role.broker.arn
}

output "metrics_port" {
  description = "Port of /metrics, /health and /ready on every instance; Prometheus finds the instances with ec2_sd_configs and the tag strata:cluster."
  value       = var.metrics_port
}

output "cluster_secret_parameter_name" {
  description = "Name (not the value) of the SSM SecureString parameter holding the Raft port's cluster secret."
  value       = aws_ssm_parameter.cluster_secret.name
}

output "admin_password_parameter_name" {
  description = "With sasl_mechanisms: name (not the value) of the SSM SecureString parameter holding the bootstrap admin's password; null without SASL."
  value       = local.sasl_enabled ? aws_ssm_parameter.admin_password[0].name : null
}

output "admin_user" {
  description = "With sasl_mechanisms: the bootstrap admin's user name; null without SASL."
  value       = local.sasl_enabled ? var.admin_user : null
}

output "security_protocol" {
  description = "security.protocol for Kafka clients: PLAINTEXT, or SASL_PLAINTEXT with sasl_mechanisms."
  value       = local.sasl_enabled ? "SASL_PLAINTEXT" : "PLAINTEXT"
}
