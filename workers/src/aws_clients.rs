//! The AWS SDK configuration and the S3 client, built one way for every binary: the worker, the
//! Lambdas (through `jobledger_handlers::aws`), `jobledger` and `replay`.
//!
//! Not an adapter: nothing here calls AWS. The code↔Terraform contract
//! (`handlers/src/aws/contract.rs`) attributes the names a file defines to that file's adapter,
//! which is why these builders are not in `s3.rs`: naming one must not link the S3 adapter.

/// The shared SDK configuration from the standard environment (region, credentials,
/// `AWS_ENDPOINT_URL`, profiles), loaded once per process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// The S3 client. With an endpoint override (moto, MinIO) buckets are addressed by path, which
/// such servers need; against AWS itself by virtual host, which S3 expects of new code.
pub fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
    use aws_sdk_s3::presigning::PresigningConfig;

    use super::*;

    /// A configuration built by hand, so the process environment (`AWS_ENDPOINT_URL` under
    /// `scripts/with-moto`) cannot leak in.
    fn sdk(endpoint: Option<&str>) -> aws_config::SdkConfig {
        let mut builder = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()));
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        builder.build()
    }

    /// Where a request for `bucket/key` goes: presigning builds the URL without a network call.
    async fn url_of(client: &aws_sdk_s3::Client) -> String {
        let presigned = client
            .get_object()
            .bucket("results-bucket")
            .key("results/job/1.jsonl")
            .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).expect("ttl"))
            .await
            .expect("presign");
        presigned.uri().to_string()
    }

    #[tokio::test]
    async fn an_endpoint_override_addresses_buckets_by_path() {
        // A host name, not an IP address: for an IP the SDK falls back to path style by itself.
        let url = url_of(&s3_client(&sdk(Some("http://minio.local:9000")))).await;
        assert!(
            url.starts_with("http://minio.local:9000/results-bucket/results/job/1.jsonl?"),
            "{url}"
        );
    }

    #[tokio::test]
    async fn aws_itself_addresses_buckets_by_virtual_host() {
        let url = url_of(&s3_client(&sdk(None))).await;
        assert!(
            url.starts_with(
                "https://results-bucket.s3.eu-west-1.amazonaws.com/results/job/1.jsonl?"
            ),
            "{url}"
        );
    }
}
