# ---------------------------------------------------------------------------------------
# Where it runs
# ---------------------------------------------------------------------------------------

variable "name" {
  description = "Name prefix for every resource (and the bucket, when bucket_name is null)."
  type        = string
  default     = "strata"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,20}$", var.name))
    error_message = "Use 1-21 lower-case letters, digits or hyphens (it prefixes the bucket and load balancer names)."
  }
}

variable "vpc_id" {
  description = "VPC that holds the brokers and the load balancer."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone, for the brokers, the controllers and the NLB. Controllers are spread over them in order."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 1
    error_message = "Give at least one subnet (three, in three zones, for a highly available cluster)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------
# The bucket
# ---------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the bucket to create. null: a unique name starting with \"<name>-\"."
  type        = string
  default     = null
}

variable "store_prefix" {
  description = "Key prefix inside the bucket (the path of s3://bucket/prefix). The brokers' IAM policy covers only this prefix."
  type        = string
  default     = "cluster"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.store_prefix))
    error_message = "Use a non-empty key prefix without leading or trailing slashes."
  }
}

variable "kms_key_arn" {
  description = "ARN of a KMS key for SSE-KMS of the bucket and for the SSM SecureString parameters (cluster secret, admin password). null: SSE-S3 (AES-256, keys managed by S3) and the AWS-managed key aws/ssm."
  type        = string
  default     = null
}

variable "enable_versioning" {
  description = <<-EOT
    Turn on S3 versioning. Off by default: Strata deletes objects itself (retention,
    compaction, garbage collection, orphan clean-up), and with versioning every deleted
    object stays as a noncurrent version that is billed until a lifecycle rule expires it.
    Turn it on to guard against an operator deleting the bucket's contents; noncurrent
    versions then expire after noncurrent_version_expiration_days.
  EOT
  type        = bool
  default     = false
}

variable "noncurrent_version_expiration_days" {
  description = "With versioning on: days after which a deleted or overwritten object's old version is removed."
  type        = number
  default     = 7
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which S3 aborts (and stops billing for) a multipart upload that a broker started and never completed, e.g. because it was killed mid-upload."
  type        = number
  default     = 3

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "Use at least one day."
  }
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects (i.e. the whole log). Keep false outside experiments."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------
# The broker software and machines
# ---------------------------------------------------------------------------------------

variable "strata_binary_url" {
  description = <<-EOT
    Where each instance downloads the `strata` binary at boot: an s3://bucket/key URL (the
    instance role is granted s3:GetObject on exactly that object) or an https:// URL. The
    binary must run on the AMI: build it on the same distribution (e.g. in an
    amazonlinux:2023 container for the default AMI) or as a static binary.
  EOT
  type        = string

  validation {
    condition     = can(regex("^(s3|https)://[^/]+/.+", var.strata_binary_url))
    error_message = "Use s3://bucket/key or https://host/path."
  }
}

variable "strata_binary_sha256" {
  description = "Expected SHA-256 (hex) of the binary; the instance refuses to start Strata on a mismatch. Empty: not checked."
  type        = string
  default     = ""

  validation {
    condition     = var.strata_binary_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.strata_binary_sha256))
    error_message = "Give 64 lower-case hex digits, or leave empty."
  }
}

variable "ami_id" {
  description = "AMI for brokers and controllers. null: the latest Amazon Linux 2023 for instance_architecture (it has curl, the AWS CLI and systemd, which the user data uses)."
  type        = string
  default     = null
}

variable "instance_architecture" {
  description = "CPU architecture of the default AMI: x86_64 or arm64. Must match instance_type and the binary."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.instance_architecture)
    error_message = "Use x86_64 or arm64."
  }
}

variable "instance_type" {
  description = "Instance type of brokers and controllers."
  type        = string
  default     = "m6i.large"
}

variable "root_volume_size_gb" {
  description = "Encrypted gp3 root volume. It holds the Raft log and snapshots and the cache's disk tier (1 GiB by default, --cache-disk-bytes), never acknowledged data that is not also in the bucket."
  type        = number
  default     = 30
}

variable "ebs_kms_key_arn" {
  description = "KMS key for the root volumes. null: the account's default EBS key."
  type        = string
  default     = null
}

variable "extra_args" {
  description = "More `strata serve` arguments, one element each (no spaces inside an element), e.g. [\"--flush-interval-ms=20\", \"--default-partitions=6\"]."
  type        = list(string)
  default     = []
}

variable "rust_log" {
  description = "RUST_LOG filter for the broker."
  type        = string
  default     = "info,openraft=warn"
}

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore so operators reach instances with Session Manager (no SSH key, no port 22)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------
# Ports and who may reach them
# ---------------------------------------------------------------------------------------

variable "kafka_port" {
  description = "Kafka port (--listen / --advertise, or the SASL_PLAINTEXT listener with sasl_mechanisms) on the brokers and the NLB."
  type        = number
  default     = 9092
}

variable "raft_port" {
  description = "Metadata Raft port (--raft-listen); reachable only from the broker security group."
  type        = number
  default     = 9093
}

variable "metrics_port" {
  description = "Prometheus /metrics, /health and /ready (--metrics-listen)."
  type        = number
  default     = 9644
}

variable "kafka_allowed_cidrs" {
  description = "CIDRs of the Kafka clients. They reach the NLB to bootstrap and then every broker directly, at the private address Metadata gives them."
  type        = list(string)
}

variable "monitoring_cidrs" {
  description = "CIDRs of the Prometheus servers that scrape the metrics port. Empty: only the NLB's health checks reach it."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# Metadata Raft controllers (fixed) and brokers (autoscaled)
# ---------------------------------------------------------------------------------------

variable "controller_count" {
  description = "Number of Raft voters: fixed instances with stable private IPs and node ids 1..N. 3 (or 5) for a cluster that survives losing one (two) of them; 1 has no metadata redundancy."
  type        = number
  default     = 3

  validation {
    condition     = contains([1, 3, 5], var.controller_count)
    error_message = "Use 1, 3 or 5 voters."
  }
}

variable "controller_host_number" {
  description = "Controller i gets the private IP cidrhost(<CIDR of its subnet>, controller_host_number + i). Pick numbers no other instance in those subnets uses."
  type        = number
  default     = 10
}

variable "broker_min_size" {
  description = "Smallest number of autoscaled brokers (Raft learners) besides the controllers. At least 1, so that the scaling metric always has a value."
  type        = number
  default     = 1

  validation {
    condition     = var.broker_min_size >= 1
    error_message = "Keep at least one autoscaled broker: target tracking needs a metric from the group."
  }
}

variable "broker_max_size" {
  description = "Largest number of autoscaled brokers."
  type        = number
  default     = 6
}

variable "scaling_metric" {
  description = "Predefined ASG metric that target tracking holds at scaling_target_value: ASGAverageCPUUtilization (default, percent), ASGAverageNetworkIn or ASGAverageNetworkOut (bytes per instance per minute)."
  type        = string
  default     = "ASGAverageCPUUtilization"

  validation {
    condition     = contains(["ASGAverageCPUUtilization", "ASGAverageNetworkIn", "ASGAverageNetworkOut"], var.scaling_metric)
    error_message = "Use ASGAverageCPUUtilization, ASGAverageNetworkIn or ASGAverageNetworkOut."
  }
}

variable "scaling_target_value" {
  description = "Target of scaling_metric (percent CPU by default)."
  type        = number
  default     = 60
}

variable "instance_warmup_seconds" {
  description = "Seconds before a new broker's metrics count for scaling (start-up, catching up with the metadata, a cold cache)."
  type        = number
  default     = 180
}

# ---------------------------------------------------------------------------------------
# Load balancer
# ---------------------------------------------------------------------------------------

variable "nlb_internal" {
  description = "Internal NLB (default). Clients must reach the brokers' private addresses anyway, since Metadata answers with them."
  type        = bool
  default     = true
}

variable "nlb_deletion_protection" {
  description = "Deletion protection on the NLB. Set false in throw-away environments so that `terraform destroy` works."
  type        = bool
  default     = true
}

variable "nlb_access_logs_bucket" {
  description = "Existing bucket for NLB access logs. null: no access logs."
  type        = string
  default     = null
}

variable "deregistration_delay_seconds" {
  description = "How long the NLB drains a broker it stops sending new connections to. Strata deregisters on SIGTERM and clients reconnect through Metadata, so this can be short."
  type        = number
  default     = 30
}

# ---------------------------------------------------------------------------------------
# Client authentication
# ---------------------------------------------------------------------------------------

variable "sasl_mechanisms" {
  description = <<-EOT
    SASL mechanisms of the Kafka listener, comma-separated, from PLAIN, SCRAM-SHA-256 and
    SCRAM-SHA-512 (e.g. "SCRAM-SHA-512"). Empty (default): a PLAINTEXT listener with no
    authentication. Set: the listener is SASL_PLAINTEXT (authenticated, not encrypted; see
    README.md), ACLs apply, and a bootstrap admin (admin_user) is created whose generated
    password is the SSM parameter /<name>/admin-password.
  EOT
  type        = string
  default     = ""

  validation {
    condition = var.sasl_mechanisms == "" || alltrue([
      for m in split(",", var.sasl_mechanisms) : contains(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], m)
    ])
    error_message = "Use a comma-separated list (no spaces) of PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, or leave empty."
  }
}

variable "admin_user" {
  description = "With sasl_mechanisms: name of the bootstrap admin, a super user created at first start (STRATA_ADMIN_USER)."
  type        = string
  default     = "admin"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.admin_user))
    error_message = "Use 1-64 letters, digits, dots, underscores or hyphens."
  }
}
