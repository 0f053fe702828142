//! Delegation chains on the data path.
//!
//! Outbound, an agent that names a principal (`Deputy-Principal`, with `Deputy-Scope` and
//! optionally `Deputy-Task` and `Deputy-Budget`) starts a chain, if its `originate` patterns
//! allow that principal; the first link is signed with the agent's SVID and delegates to the
//! called service. An agent serving a call continues its task with the `Deputy-Context` handle
//! it received: the received chain is extended with a link signed by the agent's SVID, scope and
//! budget narrowed as asked (`Deputy-Scope`, `Deputy-Budget`), never widened.
//!
//! Inbound, a peer's chain is verified hop by hop and bound to the mTLS peer and the local
//! agent; the agent receives the verified facts and a handle, never the raw chain.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deputy_delegation::{ExtendError, Grant, LinkSigner, SignError, extend, originate};
use deputy_identity::TlsMaterial;
use http::HeaderMap;
use spiffe::SpiffeId;

use crate::authz::TaskFacts;
use crate::config::{LocalAgent, Service};
use crate::context::{Context, ContextError, ContextStore};
use crate::problem::ProblemKind;
use crate::unix;

mod inbound;
pub(crate) use inbound::{inbound_facts, inbound_task, verify_inbound};

/// The handle an agent receives with a call and sends back to continue its task.
const CONTEXT: &str = "deputy-context";

/// Lifetime of a link this node starts (capped later links' lifetimes).
pub(crate) const ORIGIN_TTL: Duration = Duration::from_secs(600);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The agent's link signer, built once per SVID (parsing the leaf and loading the key are not
/// per-request work).
#[derive(Debug, Default)]
pub(crate) struct SignerCache(std::sync::Mutex<Option<(String, Arc<LinkSigner>)>>);

impl SignerCache {
    fn for_material(&self, material: &TlsMaterial) -> Result<Arc<LinkSigner>, SignError> {
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((serial, signer)) = cached.as_ref()
            && *serial == material.serial
        {
            return Ok(signer.clone());
        }
        let signer = Arc::new(LinkSigner::new(
            &material.signing.chain_der,
            &material.signing.key_pkcs8,
        )?);
        *cached = Some((material.serial.clone(), signer.clone()));
        Ok(signer)
    }
}

/// Either side's reason to refuse a call: the problem kind and what to say.
pub(crate) type Refusal = (ProblemKind, String);

/// One outbound call, as the delegation step sees it.
#[derive(Debug)]
pub(crate) struct OutboundCall<'a> {
    pub(crate) agent: &'a LocalAgent,
    pub(crate) signers: &'a SignerCache,
    pub(crate) links: &'a LinkCache,
    pub(crate) contexts: &'a ContextStore,
    pub(crate) material: &'a TlsMaterial,
    pub(crate) service: &'a Service,
    pub(crate) now: SystemTime,
    /// A policy decides which agents may start tasks (the `originate` patterns do not apply).
    pub(crate) origination_by_policy: bool,
    /// A dry run: budgets are checked, not spent.
    pub(crate) dry_run: bool,
}

/// Links this agent signed recently, reused for identical calls so that the receiving deputyd
/// verifies each link once (its cache is keyed by link hash) and signing is not per-request work.
///
/// A link is reused only for the same signer SVID, target, principal, task, scopes and requested
/// budget, while less than half its life has passed. Reuse never widens anything: the receiver
/// counts every call under one link against that link's budget, so repeated calls share it.
#[derive(Debug)]
pub(crate) struct LinkCache(std::sync::Mutex<lru::LruCache<String, Reusable>>);

#[derive(Debug, Clone)]
struct Reusable {
    header: String,
    /// The link's budget, if it has one.
    budget: Option<u64>,
    /// Unix seconds after which a fresh link is signed.
    reuse_until: i64,
}

impl Default for LinkCache {
    fn default() -> Self {
        Self(std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(1024).unwrap_or(std::num::NonZeroUsize::MIN),
        )))
    }
}

impl LinkCache {
    fn get(&self, key: &str, now: i64, budget_left: Option<u64>) -> Option<String> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let reusable = cache.get(key)?;
        let fits = match (reusable.budget, budget_left) {
            (_, None) => true,
            (Some(granted), Some(left)) => granted <= left,
            (None, Some(_)) => false,
        };
        (now < reusable.reuse_until && fits).then(|| reusable.header.clone())
    }

    fn put(&self, key: String, header: &str, now: i64) {
        let Some(last) = header.rsplit(',').next().map(str::trim) else {
            return;
        };
        // The link is ours and was just signed; read back its expiry and budget.
        let Some(claims) = deputy_delegation::unverified_claims(last) else {
            return;
        };
        let reusable = Reusable {
            header: header.to_owned(),
            budget: claims.budget.map(|b| b.calls),
            reuse_until: now + (claims.exp - now) / 2,
        };
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, reusable);
    }
}

/// What an outbound call does about tasks, worked out before the policy is asked and before
/// anything is signed or spent.
#[derive(Debug)]
pub(crate) enum TaskPlan {
    /// No task: the call carries no chain.
    None,
    /// The agent starts a task (`Deputy-Principal`).
    Originate {
        principal: String,
        task: String,
        /// The agent named the task (`Deputy-Task`): its link may be reused.
        named: bool,
        scopes: Vec<String>,
        budget: Option<u64>,
        /// How long the link lives (`Deputy-Task-Ttl`, at most [`ORIGIN_TTL`]).
        ttl: Duration,
    },
    /// The agent continues the task behind a `Deputy-Context` handle.
    Continue {
        handle: String,
        context: Arc<Context>,
        scopes: Option<Vec<String>>,
        budget: Option<u64>,
        /// How long the link lives, within the received chain's life.
        ttl: Duration,
    },
}

impl TaskPlan {
    /// The received context the call continues, if it does.
    pub(crate) fn context(&self) -> Option<&Arc<Context>> {
        match self {
            Self::Continue { context, .. } => Some(context),
            Self::None | Self::Originate { .. } => None,
        }
    }

    /// When the task's chain, as this call carries it, expires: what a credential issued for
    /// the task lives until.
    pub(crate) fn expires_at(&self, now: SystemTime) -> Option<SystemTime> {
        match self {
            Self::None => None,
            Self::Originate { ttl, .. } => Some(now + *ttl),
            Self::Continue { context, ttl, .. } => {
                Some(crate::at_unix(context.expires()).min(now + *ttl))
            }
        }
    }

    /// The task as a credential issued for it is keyed: its id, principal and originator
    /// (`agent` is the calling agent's SPIFFE ID, the originator of a task it starts).
    pub(crate) fn task_ref(&self, agent: &SpiffeId) -> Option<deputy_secrets::task::TaskRef> {
        match self {
            Self::None => None,
            Self::Originate {
                principal, task, ..
            } => Some(deputy_secrets::task::TaskRef {
                id: task.clone(),
                principal: principal.clone(),
                originator: agent.to_string(),
            }),
            Self::Continue { context, .. } => Some(context_task_ref(context)),
        }
    }

    /// The task's id, if the call carries one.
    pub(crate) fn task(&self) -> Option<&str> {
        match self {
            Self::None => None,
            Self::Originate { task, .. } => Some(task),
            Self::Continue { context, .. } => Some(context.chain.task()),
        }
    }

    /// The task as the policy sees it; `agent` is the calling agent's SPIFFE ID.
    pub(crate) fn facts(&self, agent: &SpiffeId) -> Option<TaskFacts> {
        match self {
            Self::None => None,
            Self::Originate {
                principal,
                task,
                scopes,
                budget,
                ..
            } => Some(TaskFacts {
                principal: principal.clone(),
                id: task.clone(),
                new: true,
                scope: scopes.clone(),
                budget_left: *budget,
                chain: Vec::new(),
                originator: agent.to_string(),
            }),
            Self::Continue {
                context, scopes, ..
            } => Some(TaskFacts {
                principal: context.chain.principal().to_owned(),
                id: context.chain.task().to_owned(),
                new: false,
                scope: scopes
                    .clone()
                    .unwrap_or_else(|| context.chain.last().scope.clone()),
                budget_left: context.remaining(),
                chain: crate::authz::chain_of(&context.chain.links),
                originator: context.chain.originator().to_owned(),
            }),
        }
    }
}

/// The task a received context continues, as credentials issued for it are keyed.
pub(crate) fn context_task_ref(context: &Context) -> deputy_secrets::task::TaskRef {
    deputy_secrets::task::TaskRef {
        id: context.chain.task().to_owned(),
        principal: context.chain.principal().to_owned(),
        originator: context.chain.originator().to_owned(),
    }
}

/// Works out the task of an outbound call: a new one when the agent names a principal
/// (`Deputy-Principal`), the received one when it sends a handle (`Deputy-Context`), none
/// otherwise. Nothing is signed or spent yet.
pub(crate) fn plan(call: &OutboundCall<'_>, headers: &HeaderMap) -> Result<TaskPlan, Refusal> {
    let OutboundCall {
        agent,
        contexts,
        service,
        now,
        origination_by_policy,
        ..
    } = *call;
    let budget = requested_budget(headers)?;
    let ttl = requested_ttl(headers)?;
    if let Some(handle) = header(headers, CONTEXT) {
        if headers.contains_key("deputy-principal") {
            return Err((
                ProblemKind::BadRequest,
                "a call either starts a task (Deputy-Principal) or continues one \
                 (Deputy-Context), not both; drop one of the two headers"
                    .into(),
            ));
        }
        let context = contexts
            .lookup(handle, &agent.name, unix(now))
            .map_err(|e| {
                if e == ContextError::NotYours {
                    tracing::warn!(agent = %agent.name, service = %service.name,
                        "refused a Deputy-Context issued to another agent (a stolen handle?)");
                }
                (ProblemKind::ContextRefused, e.to_string())
            })?;
        if let Some(task) = header(headers, "deputy-task")
            && task != context.chain.task()
        {
            return Err((
                ProblemKind::BadRequest,
                format!(
                    "Deputy-Task {task:?} is not the task of this context ({:?}); a context \
                     continues its own task",
                    context.chain.task()
                ),
            ));
        }
        return Ok(TaskPlan::Continue {
            handle: handle.to_owned(),
            context,
            scopes: requested_scopes(headers),
            budget,
            ttl,
        });
    }
    let Some(principal) = header(headers, "deputy-principal") else {
        return Ok(TaskPlan::None);
    };
    // With a policy, which agents may start tasks for whom is the policy's question.
    if !origination_by_policy && !agent.may_originate(principal) {
        return Err((
            ProblemKind::OriginationRefused,
            format!(
                "agent {} may not start tasks for {principal:?} (its originate patterns: {:?}); \
                 add a matching pattern to the agent's `originate` in deputyd's config",
                agent.name, agent.originate
            ),
        ));
    }
    let Some(scopes) = requested_scopes(headers) else {
        return Err((
            ProblemKind::BadRequest,
            "a task needs scopes: send Deputy-Scope, such as `tickets:read, users:read`".into(),
        ));
    };
    let named = header(headers, "deputy-task");
    Ok(TaskPlan::Originate {
        principal: principal.to_owned(),
        task: named.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned),
        named: named.is_some(),
        scopes,
        budget,
        ttl,
    })
}

/// Signs what `plan` worked out: the chain to send with the call. `narrowed` is the policy's
/// scope obligation, which must lie within what the agent asked for.
pub(crate) fn sign(
    call: &OutboundCall<'_>,
    plan: TaskPlan,
    narrowed: Option<Vec<String>>,
) -> Result<Option<String>, Refusal> {
    let requested = match &plan {
        TaskPlan::None => return Ok(None),
        TaskPlan::Originate { scopes, .. } => Some(scopes.as_slice()),
        TaskPlan::Continue { scopes, .. } => scopes.as_deref(),
    };
    if narrowed.as_ref().is_some_and(Vec::is_empty) {
        return Err((
            ProblemKind::PolicyDenied,
            "the policy's scope obligation is empty, which would delegate nothing; fix the \
             policy's `scope` (or deny the call)"
                .into(),
        ));
    }
    if let (Some(narrowed), Some(requested)) = (&narrowed, requested)
        && let Some(wider) = deputy_delegation::scope::first_uncovered(requested, narrowed)
    {
        return Err((
            ProblemKind::PolicyDenied,
            format!(
                "the policy's scope obligation {wider:?} is not within the requested scopes \
                 {requested:?}; fix the policy's `scope`"
            ),
        ));
    }
    let Some(delegate) = call.service.spiffe_id() else {
        // A tool outside the mesh gets no chain (it could not verify one) but its call still
        // counts against the budget of the task it serves.
        if let TaskPlan::Continue { context, .. } = &plan {
            spend(call.agent, context, call.dry_run)?;
        }
        return Ok(None);
    };
    match plan {
        TaskPlan::None => Ok(None),
        TaskPlan::Originate {
            principal,
            task,
            named,
            scopes,
            budget,
            ttl,
        } => originate_task(
            call,
            delegate,
            (&principal, &task, named),
            OriginGrant {
                scopes: narrowed.unwrap_or(scopes),
                budget,
                ttl,
            },
        )
        .map(Some),
        TaskPlan::Continue {
            handle,
            context,
            scopes,
            budget,
            ttl,
        } => continue_task(
            call,
            delegate,
            &handle,
            &context,
            narrowed.or(scopes),
            budget,
            ttl,
        )
        .map(Some),
    }
}

/// What a task's first link grants its delegate.
struct OriginGrant {
    scopes: Vec<String>,
    budget: Option<u64>,
    ttl: Duration,
}

/// Signs the first link of the task `(principal, task, named by the agent)` to `delegate`.
fn originate_task(
    call: &OutboundCall<'_>,
    delegate: &SpiffeId,
    (principal, task, named): (&str, &str, bool),
    OriginGrant {
        scopes,
        budget,
        ttl,
    }: OriginGrant,
) -> Result<String, Refusal> {
    let OutboundCall {
        signers,
        links,
        material,
        now,
        ..
    } = *call;
    // A named task may reuse its link; a generated one is new on every call anyway.
    let reuse_key = named.then(|| {
        format!(
            "origin\n{}\n{delegate}\n{principal}\n{task}\n{scopes:?}\n{budget:?}\n{ttl:?}",
            material.serial
        )
    });
    if let Some(header) = reuse_key
        .as_deref()
        .and_then(|key| links.get(key, unix(now), None))
    {
        return Ok(header);
    }
    let signer = signer_of(signers, material)?;
    let grant = Grant {
        delegate: delegate.clone(),
        scopes: Some(scopes),
        budget_calls: budget,
        ttl,
    };
    let chain = originate(&signer, principal, task, &grant, now).map_err(extension_refusal)?;
    if let Some(key) = reuse_key {
        links.put(key, &chain, unix(now));
    }
    Ok(chain)
}

/// Extends the chain behind `handle`: counts the call against the received link's budget and
/// signs a link to the service, narrowing scope and budget as asked.
fn continue_task(
    call: &OutboundCall<'_>,
    delegate: &SpiffeId,
    handle: &str,
    context: &Context,
    scopes: Option<Vec<String>>,
    budget: Option<u64>,
    ttl: Duration,
) -> Result<String, Refusal> {
    let OutboundCall {
        agent,
        signers,
        links,
        material,
        now,
        ..
    } = *call;
    let signer = signer_of(signers, material)?;
    // More budget than this call would leave is refused before anything is spent.
    if let (Some(asked), Some(left)) = (budget, context.remaining())
        && asked > left.saturating_sub(1)
    {
        return Err(extension_refusal(ExtendError::BudgetEscalation {
            requested: asked,
            remaining: left.saturating_sub(1),
        }));
    }
    let remaining = spend(agent, context, call.dry_run)?;
    let reuse_key = format!(
        "extend\n{}\n{delegate}\n{handle}\n{scopes:?}\n{budget:?}\n{ttl:?}",
        material.serial
    );
    if let Some(header) = links.get(&reuse_key, unix(now), remaining) {
        return Ok(header);
    }
    let grant = Grant {
        delegate: delegate.clone(),
        scopes,
        budget_calls: budget,
        ttl,
    };
    let dry_run = call.dry_run;
    let chain = extend(&context.chain, &signer, &grant, remaining, now).map_err(|e| {
        // The call is not made: it does not count (a dry run counted nothing).
        if !dry_run {
            context.refund();
        }
        extension_refusal(e)
    })?;
    // A dry run's link was signed with one call more left than a real call's: never reused.
    if !dry_run {
        links.put(reuse_key, &chain, unix(now));
    }
    Ok(chain)
}

/// Counts one call against the received link's budget; what is left, if it is limited. A dry
/// run counts nothing: it is refused only if the real call would be.
fn spend(agent: &LocalAgent, context: &Context, dry_run: bool) -> Result<Option<u64>, Refusal> {
    let spent = if dry_run {
        match context.remaining() {
            _ if context.expires() <= unix(SystemTime::now()) => {
                Err(deputy_state::LedgerError::Expired)
            }
            Some(0) => Err(deputy_state::LedgerError::Exhausted {
                limit: context.chain.last().budget.as_ref().map_or(0, |b| b.calls),
            }),
            left => Ok(left),
        }
    } else {
        // Read now, not when the request arrived: the link may have expired while it waited.
        context.spend(unix(SystemTime::now()))
    };
    spent.map_err(|error| match error {
        deputy_state::LedgerError::Exhausted { limit } => (
            ProblemKind::BudgetExhausted,
            format!(
                "agent {} has made all {limit} call(s) its delegation allows in task {}; \
                 the delegator must grant a new budget",
                agent.name,
                context.chain.task()
            ),
        ),
        other => crate::context::budget_refusal(other),
    })
}

fn signer_of(signers: &SignerCache, material: &TlsMaterial) -> Result<Arc<LinkSigner>, Refusal> {
    signers
        .for_material(material)
        .map_err(|e| (ProblemKind::NoIdentity, e.to_string()))
}

/// The scopes in `Deputy-Scope`, if any.
fn requested_scopes(headers: &HeaderMap) -> Option<Vec<String>> {
    let scopes: Vec<String> = header(headers, "deputy-scope")?
        .split(',')
        .map(|x| x.trim().to_owned())
        .filter(|x| !x.is_empty())
        .collect();
    (!scopes.is_empty()).then_some(scopes)
}

/// The calls granted with `Deputy-Budget: N`, if sent.
fn requested_budget(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    header(headers, "deputy-budget")
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                (
                    ProblemKind::BadRequest,
                    format!(
                        "Deputy-Budget {text:?} is not a number of calls; send a whole number \
                         such as `Deputy-Budget: 5`"
                    ),
                )
            })
        })
        .transpose()
}

/// `Deputy-Task-Ttl`: how long the link signed for this call lives, in seconds or as `10m`;
/// it can only shorten the default ([`ORIGIN_TTL`]), and a continued task's link never outlives
/// the chain it extends.
fn requested_ttl(headers: &HeaderMap) -> Result<Duration, Refusal> {
    let Some(text) = header(headers, "deputy-task-ttl") else {
        return Ok(ORIGIN_TTL);
    };
    let ttl = text
        .parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(text))
        .map_err(|_| {
            (
                ProblemKind::BadRequest,
                format!(
                    "Deputy-Task-Ttl {text:?} is not a duration; send seconds or a duration such \
                     as `600` or `10m`"
                ),
            )
        })?;
    if ttl < Duration::from_secs(1) || ttl > ORIGIN_TTL {
        return Err((
            ProblemKind::BadRequest,
            format!(
                "Deputy-Task-Ttl {text:?} is outside 1s..={}s; a link lives at most {}s",
                ORIGIN_TTL.as_secs(),
                ORIGIN_TTL.as_secs()
            ),
        ));
    }
    Ok(ttl)
}

fn extension_refusal(error: ExtendError) -> Refusal {
    let kind = match &error {
        ExtendError::ScopeEscalation { .. } => ProblemKind::ScopeEscalation,
        ExtendError::BudgetEscalation { .. } => ProblemKind::BudgetEscalation,
        ExtendError::InvalidScope(_) | ExtendError::NoScope => ProblemKind::BadRequest,
        ExtendError::ParentExpired => ProblemKind::ContextRefused,
        ExtendError::Sign(_) => ProblemKind::NoIdentity,
        _ => ProblemKind::ExtensionRefused,
    };
    (kind, error.to_string())
}
