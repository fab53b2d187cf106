//! Amazon Bedrock through the Converse API (`POST /model/{modelId}/converse`): images as
//! `ImageBlock`s with their format, text otherwise, usage from the reply. Credentials come from the
//! default chain (the Fargate task's IAM role); the endpoint can be moved with
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` (tests point it at a local server).

use std::time::Duration;

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput, ImageBlock, ImageFormat, ImageSource,
    InferenceConfiguration, Message, SystemContentBlock,
};

use super::retry::{CallError, parse_retry_after};
use super::{ChatModel, ChatReply, ChatRequest};

/// A Converse client for one model (or inference profile).
#[derive(Clone, Debug)]
pub struct BedrockChat {
    client: aws_sdk_bedrockruntime::Client,
    model_id: String,
}

impl BedrockChat {
    /// A client from loaded AWS settings. The SDK's own retries are off: [`super::retry::CallPolicy`]
    /// retries with the same rules for every backend and caps the total wait.
    pub fn new(sdk: &aws_config::SdkConfig, model_id: String) -> BedrockChat {
        let conf = aws_sdk_bedrockruntime::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            .build();
        BedrockChat {
            client: aws_sdk_bedrockruntime::Client::from_conf(conf),
            model_id,
        }
    }
}

fn image_format(f: image::ImageFormat) -> Option<ImageFormat> {
    match f {
        image::ImageFormat::Png => Some(ImageFormat::Png),
        image::ImageFormat::Jpeg => Some(ImageFormat::Jpeg),
        image::ImageFormat::Gif => Some(ImageFormat::Gif),
        image::ImageFormat::WebP => Some(ImageFormat::Webp),
        _ => None,
    }
}

/// Classifies a Converse failure by its error code (stable across SDK versions) and HTTP status.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    err: SdkError<E, aws_sdk_bedrockruntime::config::http::HttpResponse>,
) -> CallError {
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let retry_after = se
                .raw()
                .headers()
                .get("retry-after")
                .and_then(parse_retry_after);
            let code = se.err().code().unwrap_or("").to_string();
            let message = format!(
                "{code} ({status}): {}",
                se.err().message().unwrap_or("no message")
            );
            match code.as_str() {
                "ThrottlingException" | "TooManyRequestsException" => {
                    CallError::Throttled { retry_after }
                }
                "ServiceUnavailableException"
                | "InternalServerException"
                | "ModelNotReadyException"
                | "ModelTimeoutException" => CallError::Server {
                    message,
                    retry_after,
                },
                "ValidationException" | "ModelErrorException" => CallError::Rejected(message),
                _ if status == 429 => CallError::Throttled { retry_after },
                _ if status >= 500 => CallError::Server {
                    message,
                    retry_after,
                },
                _ => CallError::Fatal(message),
            }
        }
        SdkError::TimeoutError(_) => CallError::Timeout(Duration::ZERO),
        SdkError::DispatchFailure(e) => CallError::Transport(format!("{e:?}")),
        SdkError::ResponseError(e) => CallError::Server {
            message: format!("unreadable response: {e:?}"),
            retry_after: None,
        },
        other => CallError::Fatal(format!("{other:?}")),
    }
}

impl ChatModel for BedrockChat {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    async fn complete(&self, req: &ChatRequest) -> Result<ChatReply, CallError> {
        let mut content = Vec::new();
        if let Some(img) = &req.image {
            let format = image_format(img.format).ok_or_else(|| {
                CallError::Rejected(format!(
                    "{} images are not accepted by Converse (PNG, JPEG, GIF, WebP are)",
                    img.format.to_mime_type()
                ))
            })?;
            let block = ImageBlock::builder()
                .format(format)
                .source(ImageSource::Bytes(Blob::new(img.bytes.as_slice())))
                .build()
                .map_err(|e| CallError::Fatal(e.to_string()))?;
            content.push(ContentBlock::Image(block));
        }
        content.push(ContentBlock::Text(req.user.clone()));
        let message = Message::builder()
            .role(ConversationRole::User)
            .set_content(Some(content))
            .build()
            .map_err(|e| CallError::Fatal(e.to_string()))?;
        let out = self
            .client
            .converse()
            .model_id(&self.model_id)
            .system(SystemContentBlock::Text(req.system.to_string()))
            .messages(message)
            .inference_config(
                InferenceConfiguration::builder()
                    .max_tokens(i32::try_from(req.max_tokens).unwrap_or(i32::MAX))
                    // Low temperature: product copy should be stable between runs, not creative.
                    .temperature(0.2)
                    .build(),
            )
            .send()
            .await
            .map_err(classify)?;
        let text = match out.output() {
            Some(ConverseOutput::Message(m)) => m
                .content()
                .iter()
                .filter_map(|b| b.as_text().ok().map(String::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        let (input_tokens, output_tokens) = out
            .usage()
            .map(|u| {
                (
                    u.input_tokens().max(0) as u64,
                    u.output_tokens().max(0) as u64,
                )
            })
            .unwrap_or((0, 0));
        Ok(ChatReply {
            text,
            input_tokens,
            output_tokens,
            model: self.model_id.clone(),
        })
    }
}
