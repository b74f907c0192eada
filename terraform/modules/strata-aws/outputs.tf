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
