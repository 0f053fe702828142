//! A call is a sequence of named stages over one call context, for each direction
//! ([`crate::outbound::stages`], [`crate::inbound::stages`]). A stage reads what the stages
//! before it left in the context, adds its own, or refuses the call with a problem; the first
//! refusal ends the call. A new capability (credential injection, approvals, revocation checks)
//! is a new stage in the list, not an edit inside the others.

use std::future::Future;
use std::pin::Pin;

use crate::problem::Problem;

/// A call's refusal (boxed: a refusal is rare, and a stage's result stays a pointer wide).
pub(crate) type Refused = Box<Problem>;

/// What a stage leaves: nothing (the context carries its work) or the call's refusal.
pub(crate) type Outcome = Result<(), Refused>;

/// A stage that waits (on the network, the policy, a body).
pub(crate) type Waiting<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// What a stage that may wait leaves: its outcome at once when there is nothing to wait on
/// (what it would wait for is not configured, or not asked for by this call: no future is
/// made, nothing allocated), or its wait.
pub(crate) enum Step<'a> {
    /// Decided without waiting.
    Now(Outcome),
    /// Waits on something before it decides.
    Wait(Waiting<'a>),
}

/// One stage: its name (in the log of a refusal) and its work.
pub(crate) enum Stage<C> {
    /// Decides without waiting.
    Now(&'static str, fn(&mut C) -> Outcome),
    /// May wait on something before it decides.
    Later(&'static str, for<'a> fn(&'a mut C) -> Step<'a>),
}

impl<C> Stage<C> {
    /// The stage's name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Now(name, _) | Self::Later(name, _) => name,
        }
    }
}

/// How a call's stages ran: to the end, or refused by the named stage.
pub(crate) type Ran = Result<(), (&'static str, Refused)>;

/// What a run asks of its call between stages.
pub(crate) struct Checks<C> {
    /// A stage answered the call early (a replayed response): the rest do not run.
    pub(crate) answered: fn(&C) -> bool,
    /// The call was stopped (revoked) while it ran: no further stage runs.
    pub(crate) stopped: fn(&C) -> Option<Refused>,
}

/// Runs `stages` in order over `call` until one refuses it (returned with the refusing stage's
/// name), `checks.answered` says a stage answered it early, or `checks.stopped` stops it before
/// its next stage.
pub(crate) async fn run<C: Send>(stages: &[Stage<C>], call: &mut C, checks: &Checks<C>) -> Ran {
    for stage in stages {
        if let Some(problem) = (checks.stopped)(call) {
            return Err((stage.name(), problem));
        }
        let outcome = match stage {
            Stage::Now(_, work) => work(call),
            Stage::Later(_, work) => match work(call) {
                Step::Now(outcome) => outcome,
                Step::Wait(waiting) => waiting.await,
            },
        };
        outcome.map_err(|problem| (stage.name(), problem))?;
        if (checks.answered)(call) {
            break;
        }
    }
    Ok(())
}

/// The call's answer: the response its last stage left, or its refusal (logged with the stage
/// that refused).
pub(crate) fn answer(
    ran: Ran,
    response: Option<http::Response<crate::body::Body>>,
    close: bool,
    request_id: &str,
    side: &'static str,
    agent: &str,
) -> http::Response<crate::body::Body> {
    let problem = match (ran, response) {
        (Ok(()), Some(response)) => return response,
        (Ok(()), None) => out_of_order("the end of the pipeline", "response", request_id),
        (Err((stage, problem)), _) => {
            tracing::debug!(side, agent, stage, kind = ?problem.kind(), "call refused");
            problem
        }
    };
    crate::connections::refusal_response(&problem, close)
}

/// The refusal when a stage finds missing what an earlier stage should have left: a bug in the
/// order of the stages, refused rather than guessed around.
pub(crate) fn out_of_order(stage: &str, missing: &str, request_id: &str) -> Refused {
    Box::new(Problem::new(
        crate::problem::ProblemKind::Internal,
        format!(
            "stage {stage} found no {missing}: the stages ran out of order (a deputyd bug; \
             please report it)"
        ),
        request_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::ProblemKind;

    #[derive(Default)]
    struct Trace(Vec<&'static str>);

    fn checks(answered: fn(&Trace) -> bool) -> Checks<Trace> {
        Checks {
            answered,
            stopped: |t| {
                t.0.contains(&"stop")
                    .then(|| Problem::new(ProblemKind::Revoked, "cut", "r1").into())
            },
        }
    }

    fn first(call: &mut Trace) -> Outcome {
        call.0.push("first");
        Ok(())
    }

    fn waits(call: &mut Trace) -> Step<'_> {
        Step::Wait(Box::pin(async move {
            tokio::task::yield_now().await;
            call.0.push("waits");
            Ok(())
        }))
    }

    fn refuses(call: &mut Trace) -> Outcome {
        call.0.push("refuses");
        Err(Problem::new(ProblemKind::PolicyDenied, "no", "r1").into())
    }

    #[tokio::test]
    async fn stages_run_in_order_and_the_first_refusal_ends_the_call() {
        let stages = [
            Stage::Now("first", first as fn(&mut Trace) -> Outcome),
            Stage::Later("waits", waits),
            Stage::Now("refuses", refuses),
            Stage::Now("never", first),
        ];
        let mut trace = Trace::default();
        let (stage, problem) = run(&stages, &mut trace, &checks(|_| false))
            .await
            .expect_err("refused");
        assert_eq!(stage, "refuses");
        assert_eq!(problem.kind(), ProblemKind::PolicyDenied);
        assert_eq!(trace.0, ["first", "waits", "refuses"]);

        let mut trace = Trace::default();
        run(&stages[..2], &mut trace, &checks(|_| false))
            .await
            .expect("all pass");
        assert_eq!(trace.0, ["first", "waits"]);

        // A stage that answers the call ends it, without a refusal.
        let mut trace = Trace::default();
        run(&stages, &mut trace, &checks(|t| t.0.len() == 2))
            .await
            .expect("answered");
        assert_eq!(trace.0, ["first", "waits"]);

        // A call stopped while it ran takes no further stage.
        let mut trace = Trace(vec!["stop"]);
        let (stage, problem) = run(&stages, &mut trace, &checks(|_| false))
            .await
            .expect_err("stopped");
        assert_eq!((stage, problem.kind()), ("first", ProblemKind::Revoked));
        assert_eq!(trace.0, ["stop"]);
    }

    #[test]
    fn a_stage_out_of_order_is_a_refusal_that_says_so() {
        let problem = out_of_order("sign", "task plan", "r1");
        assert_eq!(problem.kind(), ProblemKind::Internal);
        assert_eq!(problem.to_response().status(), 500);
    }
}
