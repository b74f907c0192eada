variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "strata-example"
}

variable "vpc_id" {
  description = "An existing VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Three private subnets of that VPC, in three availability zones."
  type        = list(string)
}

variable "strata_binary_url" {
  description = "s3://bucket/key or https:// URL of a strata binary built for Amazon Linux 2023 x86_64."
  type        = string
}

variable "strata_binary_sha256" {
  description = "SHA-256 of that binary (recommended)."
  type        = string
  default     = ""
}

variable "kafka_allowed_cidrs" {
  description = "Where the Kafka clients are."
  type        = list(string)
}

variable "monitoring_cidrs" {
  description = "Where Prometheus is."
  type        = list(string)
  default     = []
}
