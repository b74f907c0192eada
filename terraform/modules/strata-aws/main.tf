# Strata on AWS: one S3 bucket (the log), a fixed set of metadata Raft voters
# ("controllers") with stable identities, an autoscaling group of brokers that join as
# Raft learners, and an NLB for bootstrapping Kafka clients. See README.md.

data "aws_region" "current" {}
data "aws_partition" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

data "aws_subnet" "this" {
  count = length(var.subnet_ids)
  id    = var.subnet_ids[count.index]
}

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.instance_architecture}"
}

locals {
  tags = merge({ "strata:cluster" = var.name }, var.tags)

  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)

  store_url = "s3://${aws_s3_bucket.log.bucket}/${var.store_prefix}"

  # Controller i (node id i + 1) lives in subnet i mod n at a fixed address, so its Raft
  # identity (node id and address) survives replacing the instance.
  controller_subnets = [for i in range(var.controller_count) : data.aws_subnet.this[i % length(var.subnet_ids)]]
  controller_ips     = [for i, s in local.controller_subnets : cidrhost(s.cidr_block, var.controller_host_number + i)]
  controllers        = join(",", [for i, ip in local.controller_ips : "${i + 1}@${ip}:${var.raft_port}"])

  # SSM SecureString parameters the instances read at boot (never a value in user data).
  sasl_enabled             = var.sasl_mechanisms != ""
  cluster_secret_parameter = "/${var.name}/cluster-secret"
  admin_password_parameter = "/${var.name}/admin-password"

  binary_from_s3 = startswith(var.strata_binary_url, "s3://")
  binary_arn     = local.binary_from_s3 ? "arn:${data.aws_partition.current.partition}:s3:::${trimprefix(var.strata_binary_url, "s3://")}" : null

  user_data = base64encode(templatefile("${path.module}/templates/user_data.sh.tftpl", {
    binary_url     = var.strata_binary_url
    binary_sha256  = var.strata_binary_sha256
    store_url      = local.store_url
    controllers    = local.controllers
    controller_ips = join(" ", local.controller_ips)
    kafka_port     = var.kafka_port
    raft_port      = var.raft_port
    metrics_port   = var.metrics_port
    kms_key_arn    = coalesce(var.kms_key_arn, "")
    region         = data.aws_region.current.name
    rust_log       = var.rust_log
    extra_args     = var.extra_args

    cluster_secret_parameter = aws_ssm_parameter.cluster_secret.name
    sasl_mechanisms          = var.sasl_mechanisms
    admin_user               = var.admin_user
    admin_password_parameter = local.sasl_enabled ? aws_ssm_parameter.admin_password[0].name : ""
  }))
}

# ---------------------------------------------------------------------------------------
# The bucket: the log and the last copy of the metadata
# ---------------------------------------------------------------------------------------

resource "aws_s3_bucket" "log" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket the user owns; CloudTrail data events are the usual audit trail for this bucket.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage and PUT cost for every segment; a user who wants it adds a replication configuration.
  #checkov:skip=CKV_AWS_21:Versioning is a variable that is off by default because Strata deletes objects itself (see enable_versioning).
  #checkov:skip=CKV2_AWS_62:No consumer of S3 event notifications; Strata finds its objects through its metadata.
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? "${var.name}-" : null
  force_destroy = var.bucket_force_destroy
  tags          = local.tags
}

resource "aws_s3_bucket_ownership_controls" "log" {
  bucket = aws_s3_bucket.log.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "log" {
  bucket                  = aws_s3_bucket.log.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "log" {
  bucket = aws_s3_bucket.log.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # One KMS data key per bucket rather than per object: Strata writes many objects.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "log" {
  bucket = aws_s3_bucket.log.id
  versioning_configuration {
    # "Disabled" leaves a new bucket unversioned (switching an existing bucket off makes
    # the provider suspend it; the lifecycle rule below then clears the old versions).
    status = var.enable_versioning ? "Enabled" : "Disabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "log" {
  bucket = aws_s3_bucket.log.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  rule {
    # Harmless without versioning; with it (or after it), removes what Strata deleted.
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.log]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.log.arn,
      "${aws_s3_bucket.log.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "log" {
  bucket     = aws_s3_bucket.log.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.log]
}

# ---------------------------------------------------------------------------------------
# Secrets: the cluster secret (always) and the SASL bootstrap admin's password (with SASL),
# generated here and kept as SSM SecureString parameters that only the instance role reads.
# Their values are in the Terraform state: keep the state encrypted and access-controlled.
# key_id: kms_key_arn when set (a customer-managed key), else null, i.e. the AWS-managed
# key aws/ssm, so that the module needs no CMK (checkov's CKV_AWS_337 passes on key_id
# being set; with kms_key_arn null the parameters are not under a CMK, by design).
# ---------------------------------------------------------------------------------------

# Authenticates the Raft port (--cluster-secret-file): an HMAC handshake and per-frame MACs.
resource "random_password" "cluster_secret" {
  length  = 64
  special = false # 64 letters and digits (~380 bits), nothing for a shell or a file to mangle
}

resource "aws_ssm_parameter" "cluster_secret" {
  name        = local.cluster_secret_parameter
  description = "Strata cluster ${var.name}: the Raft port's shared secret (--cluster-secret-file)"
  type        = "SecureString"
  key_id      = var.kms_key_arn # null: the AWS-managed key alias/aws/ssm
  value       = random_password.cluster_secret.result
  tags        = local.tags
}

resource "random_password" "admin_password" {
  count   = local.sasl_enabled ? 1 : 0
  length  = 32
  special = false # letters and digits only: safe in a systemd EnvironmentFile unquoted
}

resource "aws_ssm_parameter" "admin_password" {
  count       = local.sasl_enabled ? 1 : 0
  name        = local.admin_password_parameter
  description = "Strata cluster ${var.name}: password of the SASL bootstrap admin ${var.admin_user}"
  type        = "SecureString"
  key_id      = var.kms_key_arn # null: the AWS-managed key alias/aws/ssm
  value       = random_password.admin_password[0].result
  tags        = local.tags
}

# ---------------------------------------------------------------------------------------
# IAM: the instances may use the bucket's prefix and nothing else of S3
# ---------------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "broker" {
  name_prefix        = "${var.name}-broker-"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "broker" {
  statement {
    sid       = "ListThePrefix"
    actions   = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.log.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [var.store_prefix, "${var.store_prefix}/*"]
    }
  }

  statement {
    sid = "ObjectsUnderThePrefix"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.log.arn}/${var.store_prefix}/*"]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseTheBucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }

  statement {
    sid       = "ReadTheSecretParameters"
    actions   = ["ssm:GetParameter"]
    resources = concat([aws_ssm_parameter.cluster_secret.arn], aws_ssm_parameter.admin_password[*].arn)
  }

  dynamic "statement" {
    # A customer-managed key: decrypt with it only through SSM. (The AWS-managed aws/ssm
    # key needs no grant.)
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptTheSecretParameters"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${data.aws_region.current.name}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = local.binary_from_s3 ? [local.binary_arn] : []
    content {
      sid       = "DownloadTheBinary"
      actions   = ["s3:GetObject"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "broker" {
  name   = "strata-bucket"
  role   = aws_iam_role.broker.id
  policy = data.aws_iam_policy_document.broker.json
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count      = var.enable_ssm ? 1 : 0
  role       = aws_iam_role.broker.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "broker" {
  name_prefix = "${var.name}-broker-"
  role        = aws_iam_role.broker.name
  tags        = local.tags
}

# ---------------------------------------------------------------------------------------
# Security groups
# ---------------------------------------------------------------------------------------

resource "aws_security_group" "nlb" {
  name_prefix = "${var.name}-nlb-"
  description = "Strata NLB: Kafka bootstrap from the client CIDRs"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-nlb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "nlb_kafka" {
  for_each          = toset(var.kafka_allowed_cidrs)
  security_group_id = aws_security_group.nlb.id
  description       = "Kafka clients"
  ip_protocol       = "tcp"
  from_port         = var.kafka_port
  to_port           = var.kafka_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "nlb_kafka" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "Forward Kafka to the brokers"
  ip_protocol                  = "tcp"
  from_port                    = var.kafka_port
  to_port                      = var.kafka_port
  referenced_security_group_id = aws_security_group.broker.id
}

resource "aws_vpc_security_group_egress_rule" "nlb_health" {
  security_group_id            = aws_security_group.nlb.id
  description                  = "Health checks of /ready on the metrics port"
  ip_protocol                  = "tcp"
  from_port                    = var.metrics_port
  to_port                      = var.metrics_port
  referenced_security_group_id = aws_security_group.broker.id
}

resource "aws_security_group" "broker" {
  name_prefix = "${var.name}-broker-"
  description = "Strata brokers: Kafka from clients and the NLB, metrics from monitoring, Raft only among brokers"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-broker" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "broker_kafka_clients" {
  for_each          = toset(var.kafka_allowed_cidrs)
  security_group_id = aws_security_group.broker.id
  description       = "Kafka clients connect to the broker that Metadata names"
  ip_protocol       = "tcp"
  from_port         = var.kafka_port
  to_port           = var.kafka_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "broker_kafka_nlb" {
  security_group_id            = aws_security_group.broker.id
  description                  = "Kafka through the NLB"
  ip_protocol                  = "tcp"
  from_port                    = var.kafka_port
  to_port                      = var.kafka_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_ingress_rule" "broker_health_nlb" {
  security_group_id            = aws_security_group.broker.id
  description                  = "NLB health checks of /ready"
  ip_protocol                  = "tcp"
  from_port                    = var.metrics_port
  to_port                      = var.metrics_port
  referenced_security_group_id = aws_security_group.nlb.id
}

resource "aws_vpc_security_group_ingress_rule" "broker_metrics" {
  for_each          = toset(var.monitoring_cidrs)
  security_group_id = aws_security_group.broker.id
  description       = "Prometheus scrapes /metrics"
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "broker_raft" {
  security_group_id            = aws_security_group.broker.id
  description                  = "Metadata Raft, only from other brokers"
  ip_protocol                  = "tcp"
  from_port                    = var.raft_port
  to_port                      = var.raft_port
  referenced_security_group_id = aws_security_group.broker.id
}

resource "aws_vpc_security_group_egress_rule" "broker_raft" {
  security_group_id            = aws_security_group.broker.id
  description                  = "Metadata Raft to other brokers"
  ip_protocol                  = "tcp"
  from_port                    = var.raft_port
  to_port                      = var.raft_port
  referenced_security_group_id = aws_security_group.broker.id
}

resource "aws_vpc_security_group_egress_rule" "broker_https" {
  security_group_id = aws_security_group.broker.id
  description       = "HTTPS to S3, STS, SSM and the package and binary downloads"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ---------------------------------------------------------------------------------------
# The brokers' launch template. Controllers boot the same user data, which tells them
# apart by whether the instance's private IP is a controller address.
# ---------------------------------------------------------------------------------------

resource "aws_launch_template" "broker" {
  name_prefix   = "${var.name}-broker-"
  description   = "Strata broker: strata serve under systemd"
  image_id      = local.ami_id
  instance_type = var.instance_type
  user_data     = local.user_data
  ebs_optimized = true

  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.broker.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  network_interfaces {
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [aws_security_group.broker.id]
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-broker" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

# ---------------------------------------------------------------------------------------
# Controllers: the Raft voters, node ids 1..N at fixed private IPs
# ---------------------------------------------------------------------------------------

resource "aws_instance" "controller" {
  count = var.controller_count

  subnet_id  = local.controller_subnets[count.index].id
  private_ip = local.controller_ips[count.index]

  # The same machine, user data and hardening as the brokers' launch template. (Not the
  # launch template itself: its network interface cannot be combined with a fixed subnet
  # and private IP in one RunInstances request.)
  ami                         = local.ami_id
  instance_type               = var.instance_type
  user_data_base64            = local.user_data
  vpc_security_group_ids      = [aws_security_group.broker.id]
  associate_public_ip_address = false
  iam_instance_profile        = aws_iam_instance_profile.broker.name
  ebs_optimized               = true
  monitoring                  = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_size           = var.root_volume_size_gb
    volume_type           = "gp3"
    encrypted             = true
    kms_key_id            = var.ebs_kms_key_arn
    delete_on_termination = true
  }

  # Simplified automatic recovery: on a host failure the instance moves to new hardware
  # with the same id, private IP and volume.
  maintenance_options {
    auto_recovery = "default"
  }

  tags = merge(local.tags, {
    Name            = "${var.name}-controller-${count.index + 1}"
    "strata:role"   = "controller"
    "strata:nodeid" = tostring(count.index + 1)
  })
  volume_tags = local.tags

  lifecycle {
    # A new AMI or new user data must not replace every voter at once; roll them one at a
    # time with `terraform apply -replace='aws_instance.controller[N]'` instead.
    ignore_changes = [ami, user_data_base64]
  }
}

# ---------------------------------------------------------------------------------------
# Brokers: an autoscaling group of Raft learners
# ---------------------------------------------------------------------------------------

resource "aws_autoscaling_group" "broker" {
  name_prefix         = "${var.name}-broker-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.broker_min_size
  max_size            = var.broker_max_size
  target_group_arns   = [aws_lb_target_group.kafka.arn]

  # Replace brokers whose /ready fails, not just those whose instance is down.
  health_check_type         = "ELB"
  health_check_grace_period = var.instance_warmup_seconds
  default_instance_warmup   = var.instance_warmup_seconds

  # systemd stops strata with SIGTERM: it deregisters, ships a snapshot and exits, and its
  # partitions move to the other brokers at once (no data moves).
  termination_policies = ["OldestLaunchTemplate", "OldestInstance"]

  launch_template {
    id      = aws_launch_template.broker.id
    version = aws_launch_template.broker.latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 66
      instance_warmup        = var.instance_warmup_seconds
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-broker", "strata:role" = "broker" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }

  depends_on = [aws_instance.controller]
}

# Target tracking keeps the chosen per-instance metric near its target. Brokers are
# stateless for data: adding or removing one moves only metadata (partition preference,
# group coordination), so the group can follow load closely.
resource "aws_autoscaling_policy" "broker" {
  name                      = "${var.name}-target-tracking"
  autoscaling_group_name    = aws_autoscaling_group.broker.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = var.instance_warmup_seconds

  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = var.scaling_metric
    }
    target_value = var.scaling_target_value
  }
}

# ---------------------------------------------------------------------------------------
# NLB: TCP 9092 for bootstrapping, HTTP health checks of /ready on the metrics port
# ---------------------------------------------------------------------------------------

resource "aws_lb" "kafka" {
  name_prefix                      = substr(var.name, 0, 6)
  load_balancer_type               = "network"
  internal                         = var.nlb_internal
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.nlb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.nlb_deletion_protection
  tags                             = local.tags

  dynamic "access_logs" {
    for_each = var.nlb_access_logs_bucket == null ? [] : [var.nlb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}-nlb"
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "kafka" {
  name_prefix          = substr(var.name, 0, 6)
  port                 = var.kafka_port
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = var.deregistration_delay_seconds
  preserve_client_ip   = "true"
  tags                 = local.tags

  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = tostring(var.metrics_port)
    path                = "/ready"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_target_group_attachment" "controller" {
  count            = var.controller_count
  target_group_arn = aws_lb_target_group.kafka.arn
  target_id        = aws_instance.controller[count.index].id
  port             = var.kafka_port
}

resource "aws_lb_listener" "kafka" {
  load_balancer_arn = aws_lb.kafka.arn
  port              = var.kafka_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.kafka.arn
  }

  tags = local.tags
}
