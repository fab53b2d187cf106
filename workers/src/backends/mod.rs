//! Model backends: an OpenAI-compatible chat endpoint and Bedrock Converse (feature `bedrock`),
//! both behind [`ChatModel`], turned into a [`Backend`] by [`ModelBackend`] (prompts, checks,
//! one retry of an unusable reply, usage and cost), and chosen per job kind by [`KindBackends`].

pub mod openai;
pub mod pricing;
pub mod prompts;
pub mod retry;

#[cfg(feature = "bedrock")]
pub mod bedrock;

use std::future::Future;
use std::sync::Arc;

use image::ImageFormat;
use serde_json::json;

use crate::backend::{Backend, BuiltinBackend, Generated, ItemError, ItemUsage};
use crate::config::{AiConfig, BackendKind};
use crate::kinds::analysis;
use crate::kinds::document::Document;
use crate::kinds::image_alt::ImageInput;
use pricing::PriceTable;
use retry::{CallError, CallPolicy};

/// An image sent with a prompt.
#[derive(Clone, Debug)]
pub struct ImagePart {
    /// The encoded bytes, as received.
    pub bytes: Arc<Vec<u8>>,
    /// Their format.
    pub format: ImageFormat,
}

/// One chat call: a system prompt, one user turn (text, optionally with an image).
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// Instructions.
    pub system: &'static str,
    /// The user turn's text.
    pub user: String,
    /// An image to look at.
    pub image: Option<ImagePart>,
    /// Most output tokens.
    pub max_tokens: u32,
    /// Ask for a JSON object (where the API can enforce it).
    pub json: bool,
}

/// A model's answer and what it used.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatReply {
    /// The reply text.
    pub text: String,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed.
    pub output_tokens: u64,
    /// The model that answered.
    pub model: String,
}

/// A chat API: one call, no retries (those are [`CallPolicy`]'s job).
pub trait ChatModel: Send + Sync {
    /// `openai` or `bedrock`.
    fn name(&self) -> &'static str;

    /// Sends one request.
    fn complete(
        &self,
        req: &ChatRequest,
    ) -> impl Future<Output = Result<ChatReply, CallError>> + Send;
}

/// A [`Backend`] over a chat model: the shipped prompts, the checks on replies, usage and cost.
#[derive(Debug)]
pub struct ModelBackend<M> {
    model: M,
    policy: CallPolicy,
    prices: &'static PriceTable,
}

/// Tries per item when a reply fails its checks (malformed JSON, empty text): the first and one retry.
pub const REPLY_TRIES: u32 = 2;

impl<M: ChatModel> ModelBackend<M> {
    /// Wraps `model`, calling it under `policy` and pricing tokens with the embedded table.
    pub fn new(model: M, policy: CallPolicy) -> Self {
        ModelBackend {
            model,
            policy,
            prices: PriceTable::embedded(),
        }
    }

    async fn call(&self, req: &ChatRequest, usage: &mut ItemUsage) -> Result<String, ItemError> {
        let reply = self
            .policy
            .run(|| self.model.complete(req))
            .await
            .map_err(|e| match e {
                CallError::Rejected(reason) => ItemError::Failed {
                    reason,
                    usage: usage.clone(),
                },
                CallError::Fatal(_) => ItemError::Unavailable {
                    retryable: false,
                    message: format!("{}: {e}", self.model.name()),
                },
                _ => ItemError::Unavailable {
                    retryable: true,
                    message: format!("{}: {e}", self.model.name()),
                },
            })?;
        usage.input_tokens += reply.input_tokens;
        usage.output_tokens += reply.output_tokens;
        usage.cost_usd +=
            self.prices
                .token_cost(&reply.model, reply.input_tokens, reply.output_tokens);
        usage.model = Some(reply.model);
        Ok(reply.text)
    }

    /// Calls the model and checks the reply with `finish`; an unusable reply is retried once (with
    /// `retry_prompt` if given), then the item fails with the reason and the tokens it used.
    async fn generate<T>(
        &self,
        mut req: ChatRequest,
        retry_prompt: impl Fn(&str) -> Option<String>,
        finish: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(T, ItemUsage), ItemError> {
        let mut usage = ItemUsage::default();
        let mut problem = String::new();
        for _ in 0..REPLY_TRIES {
            let text = self.call(&req, &mut usage).await?;
            match finish(&text) {
                Ok(v) => return Ok((v, usage)),
                Err(p) => {
                    tracing::info!(backend = self.model.name(), problem = %p, "unusable model reply");
                    if let Some(user) = retry_prompt(&p) {
                        req.user = user;
                    }
                    problem = p;
                }
            }
        }
        Err(ItemError::Failed {
            reason: format!("model reply unusable after {REPLY_TRIES} tries: {problem}"),
            usage,
        })
    }
}

impl<M: ChatModel> Backend for ModelBackend<M> {
    fn name(&self) -> &str {
        self.model.name()
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        let req = ChatRequest {
            system: prompts::ALT_SYSTEM,
            user: prompts::alt_user(image.format_name(), image.width, image.height),
            image: Some(ImagePart {
                bytes: image.bytes.clone(),
                format: image.format,
            }),
            max_tokens: prompts::ALT_MAX_TOKENS,
            json: false,
        };
        let (alt, usage) = self
            .generate(req, |_| None, prompts::finish_alt_text)
            .await?;
        Ok(Generated {
            output: json!({
                "alt_text": alt,
                "length": alt.chars().count(),
                "format": image.format_name(),
                "width": image.width,
                "height": image.height,
            }),
            usage,
        })
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        let req = ChatRequest {
            system: prompts::META_SYSTEM,
            user: prompts::meta_user(doc),
            image: None,
            max_tokens: prompts::META_MAX_TOKENS,
            json: false,
        };
        let (description, usage) = self
            .generate(req, |_| None, prompts::finish_meta_description)
            .await?;
        Ok(Generated {
            output: json!({
                "description": description,
                "length": description.chars().count(),
                "language": prompts::page_language(doc).unwrap_or("und"),
            }),
            usage,
        })
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        let req = ChatRequest {
            system: prompts::ANALYSIS_SYSTEM,
            user: prompts::analysis_user(doc),
            image: None,
            max_tokens: prompts::ANALYSIS_MAX_TOKENS,
            json: true,
        };
        let (model_view, usage) = self
            .generate(
                req,
                |problem| Some(prompts::analysis_retry_user(doc, problem)),
                prompts::parse_analysis,
            )
            .await?;
        // The measured figures (counts, reading time, Flesch score, outline) are exact and cost
        // nothing, so they come with the model's judgement rather than being asked of it.
        let measured = analysis::analyse(doc);
        let mut output = serde_json::to_value(&model_view).map_err(|e| ItemError::Unavailable {
            retryable: false,
            message: format!("cannot serialise output: {e}"),
        })?;
        if let Some(map) = output.as_object_mut() {
            map.insert(
                "language".into(),
                json!(prompts::page_language(doc).unwrap_or("und")),
            );
            map.insert("measured".into(), json!(measured));
        }
        Ok(Generated { output, usage })
    }
}

/// One configured backend.
#[derive(Debug)]
pub enum AnyBackend {
    /// Offline heuristics.
    Builtin(BuiltinBackend),
    /// An OpenAI-compatible endpoint.
    OpenAi(ModelBackend<openai::OpenAiChat>),
    /// Bedrock Converse.
    #[cfg(feature = "bedrock")]
    Bedrock(ModelBackend<bedrock::BedrockChat>),
}

impl Backend for AnyBackend {
    fn name(&self) -> &str {
        match self {
            AnyBackend::Builtin(b) => b.name(),
            AnyBackend::OpenAi(b) => b.name(),
            #[cfg(feature = "bedrock")]
            AnyBackend::Bedrock(b) => b.name(),
        }
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        match self {
            AnyBackend::Builtin(b) => b.alt_text(image).await,
            AnyBackend::OpenAi(b) => b.alt_text(image).await,
            #[cfg(feature = "bedrock")]
            AnyBackend::Bedrock(b) => b.alt_text(image).await,
        }
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        match self {
            AnyBackend::Builtin(b) => b.meta_description(doc).await,
            AnyBackend::OpenAi(b) => b.meta_description(doc).await,
            #[cfg(feature = "bedrock")]
            AnyBackend::Bedrock(b) => b.meta_description(doc).await,
        }
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        match self {
            AnyBackend::Builtin(b) => b.analyse(doc).await,
            AnyBackend::OpenAi(b) => b.analyse(doc).await,
            #[cfg(feature = "bedrock")]
            AnyBackend::Bedrock(b) => b.analyse(doc).await,
        }
    }
}

/// The backend of each job kind (kinds sharing a backend share its client and concurrency limit).
#[derive(Debug)]
pub struct KindBackends {
    image_alt: Arc<AnyBackend>,
    meta_description: Arc<AnyBackend>,
    content_analysis: Arc<AnyBackend>,
    name: String,
}

/// Why the configured backends cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is missing or unusable for the chosen backend.
    #[error("{0}")]
    Config(String),
}

impl KindBackends {
    /// Builds the backends `cfg` names (each at most once). Bedrock reads the AWS environment
    /// (region, the task's IAM role, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`).
    pub async fn from_config(cfg: &AiConfig) -> Result<KindBackends, BuildError> {
        let mut built: Vec<(BackendKind, Arc<AnyBackend>)> = Vec::new();
        let mut pick = async |kind: BackendKind| -> Result<Arc<AnyBackend>, BuildError> {
            if let Some((_, b)) = built.iter().find(|(k, _)| *k == kind) {
                return Ok(b.clone());
            }
            let b = Arc::new(build_one(cfg, kind).await?);
            built.push((kind, b.clone()));
            Ok(b)
        };
        let image_alt = pick(cfg.kind_backend(jobledger_events::JobKind::ImageAlt)).await?;
        let meta_description =
            pick(cfg.kind_backend(jobledger_events::JobKind::MetaDescription)).await?;
        let content_analysis =
            pick(cfg.kind_backend(jobledger_events::JobKind::ContentAnalysis)).await?;
        let mut names = vec![
            image_alt.name().to_string(),
            meta_description.name().to_string(),
            content_analysis.name().to_string(),
        ];
        names.dedup();
        Ok(KindBackends {
            image_alt,
            meta_description,
            content_analysis,
            name: names.join("+"),
        })
    }

    /// Uses `backend` for every kind.
    pub fn single(backend: AnyBackend) -> KindBackends {
        let b = Arc::new(backend);
        KindBackends {
            name: b.name().to_string(),
            image_alt: b.clone(),
            meta_description: b.clone(),
            content_analysis: b,
        }
    }
}

fn policy(cfg: &AiConfig) -> CallPolicy {
    CallPolicy::new(
        cfg.timeout,
        cfg.max_concurrency,
        cfg.max_retries,
        cfg.max_retry_wait,
    )
}

async fn build_one(cfg: &AiConfig, kind: BackendKind) -> Result<AnyBackend, BuildError> {
    match kind {
        BackendKind::Builtin => Ok(AnyBackend::Builtin(BuiltinBackend)),
        BackendKind::OpenAi => {
            let oc = cfg.openai.as_ref().ok_or_else(|| {
                BuildError::Config("the openai backend needs OPENAI_MODEL".into())
            })?;
            let chat = openai::OpenAiChat::new(oc).map_err(BuildError::Config)?;
            Ok(AnyBackend::OpenAi(ModelBackend::new(chat, policy(cfg))))
        }
        #[cfg(feature = "bedrock")]
        BackendKind::Bedrock => {
            let bc = cfg.bedrock.as_ref().ok_or_else(|| {
                BuildError::Config("the bedrock backend needs BEDROCK_MODEL_ID".into())
            })?;
            let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let chat = bedrock::BedrockChat::new(&sdk, bc.model_id.clone());
            Ok(AnyBackend::Bedrock(ModelBackend::new(chat, policy(cfg))))
        }
        #[cfg(not(feature = "bedrock"))]
        BackendKind::Bedrock => Err(BuildError::Config(
            "AI_BACKEND=bedrock needs a worker built with the `bedrock` feature".into(),
        )),
    }
}

impl Backend for KindBackends {
    fn name(&self) -> &str {
        &self.name
    }

    async fn alt_text(&self, image: &ImageInput) -> Result<Generated, ItemError> {
        self.image_alt.alt_text(image).await
    }

    async fn meta_description(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.meta_description.meta_description(doc).await
    }

    async fn analyse(&self, doc: &Document) -> Result<Generated, ItemError> {
        self.content_analysis.analyse(doc).await
    }
}
