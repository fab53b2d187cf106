//! The contract between the code and `terraform/`, checked from both ends.
//!
//! From the code: the Lambda binaries in `src/bin/`, the environment variables each one's typed
//! config asks for (found by calling its `from_lookup` with a recording lookup), and the AWS SDK
//! calls of the adapters it links (found in their source). From Terraform (parsed with `hcl`):
//! the functions, their environment and their IAM policy statements, and the worker's. In between,
//! `jobledger_handlers::aws::contract` lists per binary its adapters, its IAM actions and the
//! adapter calls it never makes. Reads files only: no AWS, no moto.
#![cfg(feature = "aws")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jobledger_handlers::aws::contract::{
    self, Deployed, LAMBDA_LOG_ACTIONS, LOG_FILTER_ENV, SETUP_ONLY, Trigger,
};

mod code {
    //! What the Rust source says.

    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};

    use super::{read, workspace};

    /// IAM actions of each AWS SDK operation the adapters may call (`transact_write_items` is
    /// authorized per item: see `transaction_actions`).
    pub const SDK_CALLS: &[(&str, &[&str])] = &[
        ("query", &["dynamodb:Query"]),
        ("get_item", &["dynamodb:GetItem"]),
        ("put_item", &["dynamodb:PutItem"]),
        ("update_item", &["dynamodb:UpdateItem"]),
        ("delete_item", &["dynamodb:DeleteItem"]),
        ("scan", &["dynamodb:Scan"]),
        ("batch_get_item", &["dynamodb:BatchGetItem"]),
        ("batch_write_item", &["dynamodb:BatchWriteItem"]),
        ("transact_get_items", &["dynamodb:GetItem"]),
        ("transact_write_items", &[]),
        ("create_table", &["dynamodb:CreateTable"]),
        ("describe_table", &["dynamodb:DescribeTable"]),
        ("update_time_to_live", &["dynamodb:UpdateTimeToLive"]),
        // HeadObject and presigned GETs are authorized as s3:GetObject.
        ("get_object", &["s3:GetObject"]),
        ("head_object", &["s3:GetObject"]),
        ("put_object", &["s3:PutObject"]),
        ("delete_object", &["s3:DeleteObject"]),
        ("list_objects_v2", &["s3:ListBucket"]),
        ("create_bucket", &["s3:CreateBucket"]),
        ("send_message", &["sqs:SendMessage"]),
        ("send_message_batch", &["sqs:SendMessage"]),
        ("receive_message", &["sqs:ReceiveMessage"]),
        ("delete_message", &["sqs:DeleteMessage"]),
        ("delete_message_batch", &["sqs:DeleteMessage"]),
        (
            "change_message_visibility",
            &["sqs:ChangeMessageVisibility"],
        ),
        ("get_queue_attributes", &["sqs:GetQueueAttributes"]),
        // RunTask with tags needs ecs:TagResource; with a task and an execution role, iam:PassRole.
        (
            "run_task",
            &["ecs:RunTask", "ecs:TagResource", "iam:PassRole"],
        ),
        ("describe_tasks", &["ecs:DescribeTasks"]),
        ("stop_task", &["ecs:StopTask"]),
        // The Converse API is authorized as bedrock:InvokeModel.
        ("converse", &["bedrock:InvokeModel"]),
        (
            "converse_stream",
            &["bedrock:InvokeModelWithResponseStream"],
        ),
        ("invoke_model", &["bedrock:InvokeModel"]),
        ("get_secret_value", &["secretsmanager:GetSecretValue"]),
    ];

    /// The source without its `#[cfg(test)]` module (tests call what no binary calls).
    pub fn product_source(rel: &str) -> String {
        let text = read(rel);
        match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_string(),
            None => text,
        }
    }

    /// Files under the crates' `src/` (binaries excluded) that use the AWS SDK.
    pub fn sdk_files() -> Vec<String> {
        let mut out = Vec::new();
        for krate in ["events", "projections", "handlers", "workers"] {
            walk(&workspace().join(krate).join("src"), &mut out);
        }
        out.retain(|rel| !rel.contains("/bin/") && product_source(rel).contains("aws_sdk_"));
        out.sort();
        out
    }

    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(workspace())
                    .expect("inside the workspace");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }

    /// The SDK operations an adapter calls: for every `.send()` or `.presigned(` the operation
    /// nearest before it. A request whose operation is not in `SDK_CALLS` fails the test, so a
    /// new kind of call cannot slip past the IAM check.
    pub fn sdk_calls(rel: &str) -> BTreeSet<String> {
        // `self\n    .dynamo\n    .query()` reads as `self.dynamo.query()`.
        let src = product_source(rel);
        let mut text = String::with_capacity(src.len());
        for line in src.lines() {
            let line = line.split("//").next().unwrap_or_default().trim();
            if !line.starts_with('.') {
                text.push('\n');
            }
            text.push_str(line);
        }
        let mut calls = BTreeSet::new();
        let mut from = 0;
        for (at, site) in sites(&text) {
            let segment = &text[from..at];
            let call = SDK_CALLS
                .iter()
                .filter_map(|(op, _)| segment.rfind(&format!(".{op}()")).map(|i| (i, *op)))
                .max()
                .map(|(_, op)| op)
                .unwrap_or_else(|| {
                    let line = text[..at].matches('\n').count() + 1;
                    panic!(
                        "{rel}: `{site}` near line {line} (joined) sends no operation listed in \
                         SDK_CALLS; add the operation and its IAM actions there"
                    )
                });
            calls.insert(call.to_string());
            from = at + site.len();
        }
        calls
    }

    fn sites(text: &str) -> Vec<(usize, &'static str)> {
        let mut out: Vec<(usize, &'static str)> = Vec::new();
        for site in [".send()", ".presigned("] {
            out.extend(text.match_indices(site).map(|(i, _)| (i, site)));
        }
        out.sort();
        out
    }

    /// IAM actions of an operation in `rel`.
    pub fn actions_of(rel: &str, call: &str) -> Vec<String> {
        if call == "transact_write_items" {
            return transaction_actions(rel);
        }
        let (_, actions) = SDK_CALLS
            .iter()
            .find(|(op, _)| *op == call)
            .expect("calls come from SDK_CALLS");
        actions.iter().map(|a| a.to_string()).collect()
    }

    /// A transaction is authorized per item: `Put` as PutItem, `ConditionCheck` as
    /// ConditionCheckItem, and so on; the item kinds are the builders the adapter uses.
    fn transaction_actions(rel: &str) -> Vec<String> {
        let src = product_source(rel);
        let kinds = [
            ("Put::builder()", "dynamodb:PutItem"),
            ("Update::builder()", "dynamodb:UpdateItem"),
            ("Delete::builder()", "dynamodb:DeleteItem"),
            ("ConditionCheck::builder()", "dynamodb:ConditionCheckItem"),
        ];
        let actions: Vec<String> = kinds
            .iter()
            .filter(|(builder, _)| src.contains(builder))
            .map(|(_, action)| action.to_string())
            .collect();
        assert!(
            !actions.is_empty(),
            "{rel} calls transact_write_items but builds no Put, Update, Delete or ConditionCheck"
        );
        actions
    }

    /// Types and free functions an adapter file defines: naming one links the adapter.
    pub fn entry_points(rel: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in product_source(rel).lines() {
            let rest = ["pub struct ", "pub async fn ", "pub fn ", "pub enum "]
                .iter()
                .find_map(|p| line.strip_prefix(p));
            if let Some(rest) = rest {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
        names
    }

    /// Whether `word` occurs in `text` as a whole identifier.
    pub fn mentions(text: &str, word: &str) -> bool {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        text.match_indices(word).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + word.len()..].chars().next();
            !before.is_some_and(ident) && !after.is_some_and(ident)
        })
    }

    /// Values a recording lookup tries first, in order, until the config accepts one for a
    /// variable; after these, the words of the config's own error ("expected ENABLED or DISABLED").
    const CANDIDATES: &[&str] = &[
        "1",
        "0190a0b6-7c1a-7cc0-9c4e-6f1d2a3b4c5d",
        "https://example.com/v1",
        "x",
    ];

    /// The values tried per variable, and which one is current.
    #[derive(Clone, Default)]
    struct Values(BTreeMap<String, (Vec<String>, usize)>);

    impl Values {
        fn get(&self, var: &str) -> String {
            match self.0.get(var) {
                Some((list, i)) => list[*i].clone(),
                None => CANDIDATES[0].to_string(),
            }
        }

        fn entry(&mut self, var: &str) -> &mut (Vec<String>, usize) {
            self.0
                .entry(var.to_string())
                .or_insert_with(|| (CANDIDATES.iter().map(|c| c.to_string()).collect(), 0))
        }

        /// Moves `var` to its next value, learning values from `error` once the list runs out.
        fn advance(&mut self, var: &str, error: &str) -> bool {
            let (list, i) = self.entry(var);
            if *i + 1 == list.len() {
                let words = error
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                    .filter(|w| !w.is_empty() && *w != var)
                    .map(String::from)
                    .collect::<Vec<_>>();
                for w in words {
                    if !list.contains(&w) {
                        list.push(w);
                    }
                }
            }
            if *i + 1 < list.len() {
                *i += 1;
                true
            } else {
                false
            }
        }
    }

    /// One call of `read` with every variable answered from `values`, and the names it asked.
    fn run_once(
        read: contract::ReadConfig,
        values: &Values,
    ) -> (Result<(), String>, BTreeSet<String>) {
        let asked = RefCell::new(BTreeSet::new());
        let result = read(&|var: &str| {
            asked.borrow_mut().insert(var.to_string());
            Some(values.get(var))
        });
        (result, asked.into_inner())
    }

    /// Runs `read` with a lookup that answers the variables in `answered` (all when `None`)
    /// and records the names asked. A variable whose value the config rejects (its error names
    /// it) moves to its next value until one is accepted.
    fn search(
        read: contract::ReadConfig,
        answered: Option<&BTreeSet<String>>,
        mut values: Values,
    ) -> (Result<Values, String>, BTreeSet<String>) {
        let mut all_asked = BTreeSet::new();
        loop {
            let asked = RefCell::new(BTreeSet::new());
            let result = read(&|var: &str| {
                asked.borrow_mut().insert(var.to_string());
                if answered.is_some_and(|set| !set.contains(var)) {
                    return None;
                }
                Some(values.get(var))
            });
            let asked = asked.into_inner();
            all_asked.extend(asked.iter().cloned());
            let Err(error) = result else {
                return (Ok(values), all_asked);
            };
            let at_fault = asked
                .iter()
                .filter(|v| mentions(&error, v))
                .max_by_key(|v| v.len())
                .cloned();
            let Some(var) = at_fault else {
                return (
                    Err(format!("the error names no variable it read: {error}")),
                    all_asked,
                );
            };
            if answered.is_some_and(|set| !set.contains(&var)) || !values.advance(&var, &error) {
                return (Err(error), all_asked);
            }
        }
    }

    /// Every variable a config asks for under any valid setting: from a first accepted setting,
    /// each variable is tried at each candidate and at each word of the errors it causes, which
    /// finds variables read only under some settings (`BEDROCK_MODEL_ID` once
    /// `AI_BACKEND=bedrock`).
    pub fn variables_read(name: &str, read: contract::ReadConfig) -> BTreeSet<String> {
        let (base, mut asked) = search(read, None, Values::default());
        let base = base.unwrap_or_else(|e| panic!("{name}: no valid environment found: {e}"));
        let with = |var: &str, value: &str| {
            let mut values = base.clone();
            *values.entry(var) = (vec![value.to_string()], 0);
            values
        };
        let mut tried = BTreeSet::new();
        while let Some(var) = asked.iter().find(|v| !tried.contains(*v)).cloned() {
            tried.insert(var.clone());
            let mut words = BTreeSet::new();
            for candidate in CANDIDATES {
                let (result, more) = run_once(read, &with(&var, candidate));
                asked.extend(more);
                if let Err(error) = result
                    && mentions(&error, &var)
                {
                    words.extend(
                        error
                            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                            .filter(|w| !w.is_empty() && *w != var)
                            .map(String::from),
                    );
                }
            }
            for word in words {
                asked.extend(search(read, None, with(&var, &word)).1);
            }
        }
        asked
    }

    /// Whether the config loads from the variables in `set` alone (with valid values).
    pub fn loads_from(read: contract::ReadConfig, set: &BTreeSet<String>) -> Result<(), String> {
        search(read, Some(set), Values::default()).0.map(drop)
    }

    use jobledger_handlers::aws::contract;
}

mod terraform {
    //! What `terraform/` says, read with a small evaluator: literals, `local.*` references,
    //! `merge` and `concat`. Anything else (resource attributes, conditionals) is opaque, which is
    //! all the contract needs: variable names and IAM action names are literals.

    use std::collections::{BTreeMap, BTreeSet};

    use hcl::{Body, Expression, ObjectKey, TemplateExpr, TraversalOperator};

    use super::read;

    /// A value as far as it can be known without an apply.
    #[derive(Clone, Debug)]
    pub enum Value {
        /// An object (keys known).
        Object(BTreeMap<String, Value>),
        /// A tuple or list.
        List(Vec<Value>),
        /// A string; templates keep their `${...}` text.
        Str(String),
        /// Known only after an apply.
        Opaque,
    }

    impl Value {
        /// The object's entries (empty for anything else).
        pub fn entries(&self) -> BTreeMap<String, Value> {
            match self {
                Value::Object(map) => map.clone(),
                _ => BTreeMap::new(),
            }
        }

        /// The strings of a list (opaque items skipped).
        pub fn strings(&self) -> Vec<String> {
            match self {
                Value::List(items) => items
                    .iter()
                    .filter_map(|v| match v {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            }
        }
    }

    /// A configuration directory: its `locals`, its blocks.
    pub struct Config {
        locals: BTreeMap<String, Expression>,
        bodies: Vec<Body>,
    }

    impl Config {
        /// Parses every `*.tf` file of `dir` (relative to the workspace).
        pub fn load(dir: &str) -> Config {
            let mut files: Vec<_> = std::fs::read_dir(super::workspace().join(dir))
                .unwrap_or_else(|e| panic!("{dir}: {e}"))
                .map(|e| e.expect("directory entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "tf"))
                .collect();
            files.sort();
            let mut config = Config {
                locals: BTreeMap::new(),
                bodies: Vec::new(),
            };
            for path in files {
                let rel = format!(
                    "{dir}/{}",
                    path.file_name().expect("a file").to_string_lossy()
                );
                let body = hcl::parse(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
                for block in body.blocks().filter(|b| b.identifier() == "locals") {
                    for attr in block.body().attributes() {
                        config
                            .locals
                            .insert(attr.key().to_string(), attr.expr().clone());
                    }
                }
                config.bodies.push(body);
            }
            config
        }

        /// The value of `local.<name>`.
        pub fn local(&self, name: &str) -> Value {
            let expr = self
                .locals
                .get(name)
                .unwrap_or_else(|| panic!("no local {name:?} in terraform/"));
            self.eval(expr)
        }

        /// An attribute of the block `<kind> "<label>"`, as HCL text.
        pub fn block_attribute(&self, kind: &str, label: &str, attribute: &str) -> String {
            self.bodies
                .iter()
                .flat_map(|b| b.blocks())
                .filter(|b| b.identifier() == kind)
                .find(|b| b.labels().first().is_some_and(|l| l.as_str() == label))
                .unwrap_or_else(|| panic!("no {kind} {label:?}"))
                .body()
                .attributes()
                .find(|a| a.key() == attribute)
                .unwrap_or_else(|| panic!("{kind} {label:?} has no {attribute}"))
                .expr()
                .to_string()
        }

        fn eval(&self, expr: &Expression) -> Value {
            match expr {
                Expression::String(s) => Value::Str(s.clone()),
                Expression::TemplateExpr(t) => match t.as_ref() {
                    TemplateExpr::QuotedString(s) => Value::Str(s.clone()),
                    TemplateExpr::Heredoc(_) => Value::Opaque,
                },
                Expression::Array(items) => {
                    Value::List(items.iter().map(|e| self.eval(e)).collect())
                }
                Expression::Object(object) => Value::Object(
                    object
                        .iter()
                        .filter_map(|(k, v)| {
                            let key = match k {
                                ObjectKey::Identifier(id) => id.to_string(),
                                ObjectKey::Expression(e) => match self.eval(e) {
                                    Value::Str(s) => s,
                                    _ => return None,
                                },
                                _ => return None,
                            };
                            Some((key, self.eval(v)))
                        })
                        .collect(),
                ),
                Expression::Parenthesis(inner) => self.eval(inner),
                Expression::Traversal(t) => match (&t.expr, t.operators.as_slice()) {
                    (Expression::Variable(v), [TraversalOperator::GetAttr(name)])
                        if v.as_str() == "local" =>
                    {
                        self.local(name.as_str())
                    }
                    _ => Value::Opaque,
                },
                Expression::FuncCall(call) => {
                    let args: Vec<Value> = call.args.iter().map(|e| self.eval(e)).collect();
                    match call.name.name.as_str() {
                        "merge" => Value::Object(args.iter().flat_map(Value::entries).collect()),
                        "concat" => Value::List(
                            args.into_iter()
                                .flat_map(|a| match a {
                                    Value::List(items) => items,
                                    other => vec![other],
                                })
                                .collect(),
                        ),
                        _ => Value::Opaque,
                    }
                }
                _ => Value::Opaque,
            }
        }
    }

    /// One IAM policy statement.
    #[derive(Clone, Debug)]
    pub struct Statement {
        /// Its `sid`.
        pub sid: String,
        /// Its actions.
        pub actions: BTreeSet<String>,
        /// Its resources, as HCL template text.
        pub resources: Vec<String>,
    }

    /// Statements from a list of `{ sid, actions, resources }` objects.
    pub fn statements(list: &Value) -> Vec<Statement> {
        let Value::List(items) = list else {
            panic!("a policy is a list of statements, found {list:?}")
        };
        items
            .iter()
            .map(|item| {
                let fields = item.entries();
                let field = |name: &str| fields.get(name).cloned().unwrap_or(Value::Opaque);
                Statement {
                    sid: match field("sid") {
                        Value::Str(s) => s,
                        _ => "(no sid)".into(),
                    },
                    actions: field("actions").strings().into_iter().collect(),
                    resources: field("resources").strings(),
                }
            })
            .collect()
    }

    /// What Terraform deploys for one binary.
    #[derive(Clone, Debug, Default)]
    pub struct Function {
        /// Names of the environment variables it sets.
        pub env: BTreeSet<String>,
        /// Its role's statements.
        pub statements: Vec<Statement>,
    }

    impl Function {
        /// Every action of its role.
        pub fn actions(&self) -> BTreeSet<String> {
            self.statements
                .iter()
                .flat_map(|s| s.actions.iter().cloned())
                .collect()
        }
    }

    /// The Lambda functions of `lambda.tf` and the worker of `ecs.tf`.
    pub struct Deployment {
        /// Per function key.
        pub functions: BTreeMap<String, Function>,
        /// The worker task (container environment and task role).
        pub worker: Function,
        /// Variables the worker gets from Secrets Manager (task definition `secrets`).
        pub worker_secrets: BTreeSet<String>,
    }

    /// Reads the deployment from `terraform/` and its `lambda_function` module.
    pub fn deployment() -> Deployment {
        let root = Config::load("terraform");
        let module = Config::load("terraform/modules/lambda_function");

        // The module: every function gets its environment and statements from these two locals,
        // plus writing to its own log group.
        let wiring = [
            ("for_each", "local.lambda_settings"),
            ("environment", "local.lambda_env[each.key]"),
            ("policy_statements", "local.lambda_policies[each.key]"),
        ];
        for (attribute, want) in wiring {
            assert_eq!(
                root.block_attribute("module", "lambda", attribute),
                want,
                "module \"lambda\" {attribute}"
            );
        }
        let log_statement = Statement {
            sid: "OwnLogGroup".into(),
            actions: module.local("log_actions").strings().into_iter().collect(),
            resources: vec!["${aws_cloudwatch_log_group.this.arn}:*".into()],
        };

        let names: BTreeSet<String> = root
            .local("lambda_defaults")
            .entries()
            .into_keys()
            .collect();
        let envs = root.local("lambda_env").entries();
        let policies = root.local("lambda_policies").entries();
        let mut functions = BTreeMap::new();
        for name in names {
            let env = envs
                .get(&name)
                .unwrap_or_else(|| panic!("lambda_env has no {name}"))
                .entries()
                .into_keys()
                .collect();
            let mut statements = vec![log_statement.clone()];
            statements.extend(statements_of(&policies, &name));
            functions.insert(name, Function { env, statements });
        }
        let worker = Function {
            env: root.local("worker_env").entries().into_keys().collect(),
            statements: statements(&root.local("worker_policy")),
        };
        let worker_secrets = root
            .local("worker_secret_env")
            .entries()
            .into_keys()
            .collect();
        Deployment {
            functions,
            worker,
            worker_secrets,
        }
    }

    fn statements_of(policies: &BTreeMap<String, Value>, name: &str) -> Vec<Statement> {
        statements(
            policies
                .get(name)
                .unwrap_or_else(|| panic!("lambda_policies has no {name}")),
        )
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("handlers/ is in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn lambda_binaries() -> BTreeSet<String> {
    std::fs::read_dir(workspace().join("handlers/src/bin"))
        .expect("handlers/src/bin")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            p.file_stem()
                .expect("a file")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The source that wires a binary: what it names is what it links.
fn wiring_source(d: &Deployed) -> String {
    match d.trigger {
        Trigger::EcsTask => read("workers/src/bin/worker.rs") + &read("workers/src/process.rs"),
        _ => read(&format!("handlers/src/bin/{}.rs", d.name)),
    }
}

fn everything() -> Vec<Deployed> {
    let mut all = contract::lambda_functions();
    all.push(contract::worker());
    all
}

fn terraform_function(tf: &terraform::Deployment, name: &str) -> terraform::Function {
    if name == "worker" {
        return tf.worker.clone();
    }
    tf.functions
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("terraform/lambda.tf deploys no function {name:?}"))
}

/// The actions a binary's code and trigger need, each with where the need comes from.
fn needed_actions(d: &Deployed) -> BTreeMap<String, String> {
    let mut needed = BTreeMap::new();
    for adapter in d.adapters {
        for call in code::sdk_calls(adapter) {
            let skipped = d
                .not_called
                .iter()
                .chain(SETUP_ONLY)
                .any(|n| n.adapter == *adapter && n.call == call);
            if skipped {
                continue;
            }
            for action in code::actions_of(adapter, &call) {
                needed
                    .entry(action)
                    .or_insert_with(|| format!("{adapter} calls {call}"));
            }
        }
    }
    for action in d.trigger.platform_actions() {
        needed
            .entry(action.to_string())
            .or_insert_with(|| format!("its trigger {:?}", d.trigger));
    }
    if d.trigger != Trigger::EcsTask {
        for action in LAMBDA_LOG_ACTIONS {
            needed
                .entry(action.to_string())
                .or_insert_with(|| "Lambda writes its logs".into());
        }
    }
    needed
}

#[test]
fn every_lambda_binary_has_a_function_and_every_function_a_binary() {
    let binaries = lambda_binaries();
    let functions: BTreeSet<String> = terraform::deployment().functions.into_keys().collect();
    let listed: BTreeSet<String> = contract::lambda_functions()
        .iter()
        .map(|d| d.name.to_string())
        .collect();
    assert_eq!(
        binaries, functions,
        "handlers/src/bin/*.rs (left) and the functions of terraform/lambda.tf (right) differ"
    );
    assert_eq!(
        binaries, listed,
        "handlers/src/bin/*.rs (left) and aws::contract::lambda_functions (right) differ"
    );
    let deploy = read("scripts/deploy.sh");
    let built: BTreeSet<String> = deploy
        .lines()
        .find_map(|l| l.strip_prefix("FUNCTIONS=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("scripts/deploy.sh has a FUNCTIONS=(...) line")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        binaries, built,
        "handlers/src/bin/*.rs (left) and the zips scripts/deploy.sh builds (right) differ"
    );
}

#[test]
fn each_binary_reads_the_config_its_contract_names() {
    for d in everything() {
        let call = format!("{}::from_env()", d.config_type);
        assert!(
            wiring_source(&d).contains(&call),
            "{}: its source does not call {call}, the config the contract reads",
            d.name
        );
    }
}

#[test]
fn each_config_loads_from_what_terraform_sets_and_reads_all_of_it() {
    let tf = terraform::deployment();
    // The worker's attempt comes from the launcher's container overrides.
    let ecs = code::product_source("handlers/src/aws/ecs.rs");
    let overrides: BTreeSet<String> = ecs
        .split(".environment(env(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(String::from)
        .collect();
    assert!(!overrides.is_empty(), "ecs.rs sets no container override");

    let mut problems = Vec::new();
    for d in everything() {
        let read = code::variables_read(d.name, d.read_config);
        let function = terraform_function(&tf, d.name);
        let mut set = function.env.clone();
        if d.trigger == Trigger::EcsTask {
            set.extend(overrides.iter().cloned());
            set.extend(tf.worker_secrets.iter().cloned());
        }
        if let Err(error) = code::loads_from(d.read_config, &set) {
            problems.push(format!(
                "{}: its config does not load from what Terraform sets ({set:?}): {error}",
                d.name
            ));
        }
        for var in &function.env {
            if !read.contains(var) && !LOG_FILTER_ENV.contains(&var.as_str()) {
                problems.push(format!(
                    "{}: Terraform sets {var}; the code never reads it",
                    d.name
                ));
            }
        }
        for var in LOG_FILTER_ENV {
            if !function.env.contains(*var) {
                problems.push(format!(
                    "{}: Terraform does not set {var} (log level)",
                    d.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn each_binary_declares_every_adapter_its_wiring_names() {
    let adapters: Vec<String> = code::sdk_files()
        .into_iter()
        .filter(|f| !code::sdk_calls(f).is_empty())
        .collect();
    for d in everything() {
        let source = wiring_source(&d);
        for adapter in &adapters {
            let named: Vec<String> = code::entry_points(adapter)
                .into_iter()
                .filter(|name| code::mentions(&source, name))
                .collect();
            assert!(
                named.is_empty() || d.adapters.contains(&adapter.as_str()),
                "{} names {named:?} from {adapter}, which its contract does not list as an adapter",
                d.name
            );
        }
        for adapter in d.adapters {
            assert!(
                adapters.contains(&adapter.to_string()),
                "{}: {adapter} is listed as an adapter but makes no AWS SDK call",
                d.name
            );
        }
    }
}

#[test]
fn every_exemption_names_a_call_its_adapter_makes() {
    for d in everything() {
        for n in d.not_called.iter().chain(SETUP_ONLY) {
            assert!(
                code::sdk_calls(n.adapter).contains(n.call),
                "{}: exempts {} in {}, which no longer calls it ({})",
                d.name,
                n.call,
                n.adapter,
                n.why
            );
        }
    }
}

#[test]
fn the_contract_lists_exactly_the_actions_the_code_and_trigger_need() {
    let mut problems = Vec::new();
    for d in everything() {
        let needed = needed_actions(&d);
        let declared: BTreeSet<String> = d.iam_actions.iter().map(|a| a.to_string()).collect();
        for (action, why) in &needed {
            if !declared.contains(action) {
                problems.push(format!(
                    "{}: needs {action} ({why}); its contract lacks it",
                    d.name
                ));
            }
        }
        for action in &declared {
            if !needed.contains_key(action) {
                problems.push(format!(
                    "{}: its contract lists {action}, which no call it makes needs",
                    d.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn each_role_in_terraform_allows_exactly_the_contract_actions() {
    let tf = terraform::deployment();
    let mut problems = Vec::new();
    for d in everything() {
        let granted = terraform_function(&tf, d.name).actions();
        let declared: BTreeSet<String> = d.iam_actions.iter().map(|a| a.to_string()).collect();
        for missing in declared.difference(&granted) {
            problems.push(format!("{}: Terraform's policy lacks {missing}", d.name));
        }
        for extra in granted.difference(&declared) {
            problems.push(format!(
                "{}: Terraform grants {extra}, which the code does not use",
                d.name
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_role_has_a_wildcard_action() {
    let tf = terraform::deployment();
    for (name, function) in tf
        .functions
        .iter()
        .chain([(&"worker".to_string(), &tf.worker)])
    {
        for s in &function.statements {
            for action in &s.actions {
                assert!(
                    !action.contains('*'),
                    "{name}: statement {} allows {action}",
                    s.sid
                );
            }
            assert!(
                !s.resources.iter().any(|r| r == "*"),
                "{name}: statement {} is on every resource",
                s.sid
            );
        }
    }
}

#[test]
fn every_binary_that_loads_events_may_read_offloaded_payloads_and_only_there() {
    let tf = terraform::deployment();
    let events = "events/src/dynamo.rs";
    assert!(
        code::sdk_calls(events).contains("get_object"),
        "the event store no longer reads payloads from S3: revisit this test"
    );
    for d in everything().iter().filter(|d| d.adapters.contains(&events)) {
        let function = terraform_function(&tf, d.name);
        let readable: Vec<&String> = function
            .statements
            .iter()
            .filter(|s| s.actions.contains("s3:GetObject"))
            .flat_map(|s| &s.resources)
            .collect();
        assert!(
            readable.iter().any(|r| r.ends_with("/payloads/*")),
            "{}: loads events but may not s3:GetObject on payloads/ (found {readable:?})",
            d.name
        );
        for r in readable {
            assert!(
                !r.ends_with("}/*") && r.contains('/'),
                "{}: s3:GetObject on {r} is not scoped to a prefix",
                d.name
            );
        }
    }
}
