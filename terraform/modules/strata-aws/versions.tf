terraform {
  # optional() object attributes and the `precondition` checks need 1.3+; 1.5 is what the
  # module is written against.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.x: security groups on network load balancers, maintenance_options on instances.
      version = ">= 5.30.0, < 7.0.0"
    }
    random = {
      # random_password: the cluster secret and the SASL bootstrap admin's password.
      source  = "hashicorp/random"
      version = ">= 3.5.0, < 4.0.0"
    }
  }
}
