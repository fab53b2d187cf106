//! `S3ObjectStore`: results, checkpoints and large inputs in S3 (`RESULTS_BUCKET`).
//!
//! Objects are written with server-side encryption (SSE-S3, or SSE-KMS with a configured key),
//! named by `s3://bucket/key` URIs. Reads and presigned URLs take any `s3://` URI (an
//! `input_uri` may name another bucket, if the role may read it).

use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::ServerSideEncryption;

use crate::objects::{ObjectError, ObjectStore, check_relative};

/// The longest lifetime S3 accepts for a presigned URL (SigV4: one week).
pub const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// How objects are encrypted at rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// SSE-S3 (`AES256`), S3-managed keys; what the Terraform bucket uses by default.
    #[default]
    Aes256,
    /// SSE-KMS; `None` uses the account's `aws/s3` key.
    Kms(Option<String>),
}

/// Objects in one S3 bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    encryption: Encryption,
}

/// Splits `s3://bucket/key`.
pub fn parse_s3_uri(uri: &str) -> Result<(&str, &str), ObjectError> {
    uri.strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
        .ok_or_else(|| ObjectError::InvalidRef(uri.to_string(), "expected s3://bucket/key".into()))
}

fn check_key(key: &str) -> Result<(), ObjectError> {
    check_relative(key).map_err(|why| ObjectError::InvalidRef(key.to_string(), why.into()))
}

fn backend<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &str,
    uri: &str,
    e: SdkError<E>,
) -> ObjectError {
    ObjectError::Backend(format!("S3 {operation} {uri}: {}", DisplayErrorContext(&e)))
}

impl S3ObjectStore {
    /// A store writing to `bucket` with SSE-S3.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3ObjectStore {
            client,
            bucket: bucket.into(),
            encryption: Encryption::Aes256,
        }
    }

    /// The same store, writing with the given encryption.
    pub fn with_encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = encryption;
        self
    }

    /// Builds the client from the environment (region, credentials, `AWS_ENDPOINT_URL`; see
    /// [`crate::aws_clients::s3_client`]) and writes to `RESULTS_BUCKET`.
    pub async fn from_env() -> Result<Self, ObjectError> {
        let bucket = std::env::var("RESULTS_BUCKET")
            .ok()
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                ObjectError::Backend("environment variable RESULTS_BUCKET is not set".into())
            })?;
        let sdk = crate::aws_clients::sdk_config().await;
        Ok(Self::new(crate::aws_clients::s3_client(&sdk), bucket))
    }

    /// The bucket objects are written to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The URI of `key` in this store's bucket.
    pub fn uri_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

impl ObjectStore for S3ObjectStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, ObjectError> {
        check_key(key)?;
        let uri = self.uri_of(key);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(bytes.into());
        request = match &self.encryption {
            Encryption::Aes256 => request.server_side_encryption(ServerSideEncryption::Aes256),
            Encryption::Kms(key_id) => request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .set_ssekms_key_id(key_id.clone()),
        };
        if key.ends_with(".jsonl") {
            request = request.content_type("application/x-ndjson");
        } else if key.ends_with(".json") {
            request = request.content_type("application/json");
        }
        request
            .send()
            .await
            .map_err(|e| backend("PutObject", &uri, e))?;
        Ok(uri)
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>, ObjectError> {
        let (bucket, key) = parse_s3_uri(uri)?;
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Err(ObjectError::NotFound(uri.to_string()));
            }
            Err(e) => return Err(backend("GetObject", uri, e)),
        };
        let body = out.body.collect().await.map_err(|e| {
            ObjectError::Backend(format!("S3 GetObject {uri}: reading the body: {e}"))
        })?;
        Ok(body.into_bytes().to_vec())
    }

    async fn presign_get(&self, uri: &str, expires_in: Duration) -> Result<String, ObjectError> {
        let (bucket, key) = parse_s3_uri(uri)?;
        if expires_in.is_zero() || expires_in > MAX_PRESIGN {
            return Err(ObjectError::InvalidRef(
                uri.to_string(),
                format!("a presigned URL lives 1 s to 7 days, not {expires_in:?}"),
            ));
        }
        // A URL to nothing would only fail later, in the client's hands: check first, as the
        // filesystem store does. (HeadObject is allowed by s3:GetObject.)
        match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => {}
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {
                return Err(ObjectError::NotFound(uri.to_string()));
            }
            Err(e) => return Err(backend("HeadObject", uri, e)),
        }
        let config = PresigningConfig::expires_in(expires_in)
            .map_err(|e| ObjectError::InvalidRef(uri.to_string(), e.to_string()))?;
        let presigned = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| backend("presign GetObject", uri, e))?;
        Ok(presigned.uri().to_string())
    }
}
