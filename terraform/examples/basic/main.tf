# A three-controller Strata cluster plus 1-6 autoscaled brokers in an existing VPC.
# See README.md next to this file.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30.0, < 7.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5.0, < 4.0.0"
    }
  }
}

provider "aws" {
  region = var.region
}

module "strata" {
  source = "../../modules/strata-aws"

  name       = var.name
  vpc_id     = var.vpc_id
  subnet_ids = var.subnet_ids

  strata_binary_url    = var.strata_binary_url
  strata_binary_sha256 = var.strata_binary_sha256

  kafka_allowed_cidrs = var.kafka_allowed_cidrs
  monitoring_cidrs    = var.monitoring_cidrs

  controller_count = 3
  broker_min_size  = 1
  broker_max_size  = 6

  # Left at their safe defaults (NLB deletion protection on, bucket kept while it holds
  # objects); README.md says how to tear the example down.

  # Kafka clients authenticate with SCRAM over a SASL_PLAINTEXT listener, and a bootstrap
  # admin "admin" is created (its password: the SSM parameter in the output
  # admin_password_parameter_name). Off here: the listener stays PLAINTEXT.
  # sasl_mechanisms = "SCRAM-SHA-512"

  extra_args = ["--default-partitions=6"]

  tags = {
    environment = "example"
  }
}
