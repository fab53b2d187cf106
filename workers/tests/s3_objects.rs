//! `S3ObjectStore` on moto: put with SSE, get by URI, presigned GET downloaded over HTTP.
//!
//! Run through `scripts/with-moto` (it starts moto and exports `AWS_ENDPOINT_URL`).

use std::time::Duration;

use aws_sdk_s3::types::ServerSideEncryption;
use jobledger_testsupport::moto;
use jobledger_workers::s3::{Encryption, parse_s3_uri};
use jobledger_workers::{ObjectError, ObjectStore, S3ObjectStore};

/// How to run this file, for the message when moto is missing.
const RUN_AS: &str =
    "scripts/with-moto cargo test -p jobledger-workers --features aws --test s3_objects";

async fn fresh_store() -> (aws_sdk_s3::Client, S3ObjectStore) {
    let client = moto::s3_client(&moto::endpoint(RUN_AS));
    let bucket = moto::unique("results");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    (client.clone(), S3ObjectStore::new(client, bucket))
}

#[tokio::test]
async fn a_put_object_is_encrypted_and_reads_back_by_its_uri() {
    let (client, store) = fresh_store().await;
    let body = "{\"id\":\"post-1\",\"description\":\"Café ✓\"}\n".repeat(1_000);
    let uri = store
        .put("results/job-1/1.jsonl", body.clone().into_bytes())
        .await
        .expect("put");
    assert_eq!(
        uri,
        format!("s3://{}/results/job-1/1.jsonl", store.bucket())
    );
    assert_eq!(store.get(&uri).await.expect("get"), body.as_bytes());

    let head = client
        .head_object()
        .bucket(store.bucket())
        .key("results/job-1/1.jsonl")
        .send()
        .await
        .expect("head");
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256),
        "objects must be written with SSE"
    );

    // Putting the same key again replaces the object.
    store
        .put("results/job-1/1.jsonl", b"{}\n".to_vec())
        .await
        .expect("put again");
    assert_eq!(store.get(&uri).await.expect("get"), b"{}\n");
}

#[tokio::test]
async fn kms_encryption_is_requested_when_configured() {
    let (client, store) = fresh_store().await;
    let store = store.with_encryption(Encryption::Kms(None));
    store
        .put("checkpoints/job-1/1.json", b"{}".to_vec())
        .await
        .expect("put");
    let head = client
        .head_object()
        .bucket(store.bucket())
        .key("checkpoints/job-1/1.json")
        .send()
        .await
        .expect("head");
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
}

#[tokio::test]
async fn a_presigned_url_downloads_the_object_over_plain_http() {
    let (_client, store) = fresh_store().await;
    let body = b"line 1\nline 2\n".to_vec();
    let uri = store
        .put("results/job-2/1.jsonl", body.clone())
        .await
        .expect("put");
    let url = store
        .presign_get(&uri, Duration::from_secs(900))
        .await
        .expect("presign");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=900"),
        "{url} is not a presigned URL valid for 900 s"
    );
    let response = reqwest::get(&url).await.expect("GET the presigned URL");
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(response.bytes().await.expect("body").as_ref(), &body[..]);

    for bad in [Duration::ZERO, Duration::from_secs(8 * 24 * 3600)] {
        assert!(
            matches!(
                store.presign_get(&uri, bad).await,
                Err(ObjectError::InvalidRef(..))
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_object_is_not_found_for_get_and_presign() {
    let (_client, store) = fresh_store().await;
    let uri = store.uri_of("results/nope/1.jsonl");
    assert!(
        matches!(store.get(&uri).await, Err(ObjectError::NotFound(u)) if u == uri),
        "get of a missing key"
    );
    assert!(
        matches!(
            store.presign_get(&uri, Duration::from_secs(60)).await,
            Err(ObjectError::NotFound(_))
        ),
        "presign of a missing key"
    );
    // A missing bucket is a backend failure, not a missing object.
    let other = format!("s3://{}/k", moto::unique("no-such-bucket"));
    assert!(
        matches!(store.get(&other).await, Err(ObjectError::Backend(_))),
        "get from a missing bucket"
    );
}

#[tokio::test]
async fn bad_keys_and_uris_are_refused_before_any_request() {
    let (_client, store) = fresh_store().await;
    for key in ["", "/abs", "a//b", "a/../b", "./a"] {
        assert!(
            matches!(
                store.put(key, vec![]).await,
                Err(ObjectError::InvalidRef(..))
            ),
            "{key:?}"
        );
    }
    for uri in [
        "file:///etc/passwd",
        "s3://",
        "s3://bucket",
        "s3://bucket/",
        "s3:///key",
    ] {
        assert!(
            matches!(store.get(uri).await, Err(ObjectError::InvalidRef(..))),
            "{uri:?}"
        );
    }
    assert_eq!(
        parse_s3_uri("s3://b/k/x.json").ok(),
        Some(("b", "k/x.json"))
    );
}
