//! Calls that continue across rounds (revision 2026-07-28's input-required results): a client on
//! that revision cannot be sent requests, so when the upstream serving its call asks for
//! sampling, elicitation or roots, the call is parked — still running, its upstream request
//! waiting — and the client is answered `resultType: "input_required"` with the upstream's
//! request (redacted) and an opaque `requestState`. The client retries the same call with its
//! answer and that state; the answer goes to the upstream and the call goes on, to its result
//! or to the next request. Works over `/mcp` (each round its own HTTP request) and stdio.
//!
//! A parked call belongs to the credential that made it; it is cancelled when it is not
//! resumed within [`PARK_TTL`]; each credential parks at most [`MAX_PARKED`] calls.

#![expect(
    deprecated,
    reason = "sampling and roots are deprecated by SEP-2577 and still what upstreams send (issue 20)"
)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequest, ElicitRequestParams, ElicitResult, InputRequest, InputRequiredResult,
    InputResponses, ListRootsRequest, ListRootsResult, LoggingLevel,
    LoggingMessageNotificationParam,
};
use rmcp::{ErrorData, Peer, RoleServer};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use warden_runtime::{ClientRequestKind, ClientSide, Outcome};

/// How long a parked call waits for the client's next round.
pub(crate) const PARK_TTL: Duration = Duration::from_secs(120);

/// Parked calls per credential at most.
pub(crate) const MAX_PARKED: usize = 16;

/// Parked calls of one front-end at most, whoever made them.
pub(crate) const MAX_PARKED_ALL: usize = 4096;

/// The key of the one input request of a round.
const KEY: &str = "warden";

/// What a running call tells the handler waiting on it.
pub(crate) enum Event {
    /// The upstream asks the client: answer on `reply`.
    Ask {
        request: Box<InputRequest>,
        reply: oneshot::Sender<serde_json::Value>,
        /// Where the call's log messages go (the retry that resumes it redirects them).
        log: LogTo,
    },
    /// The call ended.
    Done(Outcome),
}

/// A call between rounds.
struct Parked {
    owner: String,
    /// The kind, name and arguments of the call (a retry must repeat them).
    call: String,
    events: mpsc::Receiver<Event>,
    reply: oneshot::Sender<serde_json::Value>,
    stop: CancellationToken,
    log: LogTo,
}

/// The parked calls of one front-end.
#[derive(Default)]
pub(crate) struct Rounds {
    parked: Mutex<HashMap<String, Parked>>,
    /// This instance's id in a fleet, named in every `requestState` it issues (so that
    /// another instance the retry reaches knows where to pass it).
    instance: Option<String>,
}

/// The instance a `requestState` names, if it names one (`wrs_<instance>_<random>`; an
/// instance alone issues `wrs_<random>`).
pub(crate) fn instance_of(state: &str) -> Option<&str> {
    state
        .strip_prefix("wrs_")?
        .split_once('_')
        .map(|(instance, _)| instance)
}

/// What a round ends with: the call's outcome, or a request for the client.
pub(crate) enum Round {
    /// The call ended.
    Done(Outcome),
    /// The client must answer this and retry.
    Input(InputRequiredResult),
}

/// Why a retry could not continue a parked call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Resume {
    /// No call is parked under that state (expired, another instance's, or never).
    #[error("no call is waiting under this requestState (it expired after {}s, was made through another Warden instance, or never existed): call again without it", PARK_TTL.as_secs())]
    Unknown,
    /// Parked by another credential, or for another call (kind, name or arguments).
    #[error("this requestState belongs to another call")]
    NotYours,
    /// The retry carries no answer to the request.
    #[error("the retry carries no inputResponses entry `{KEY}` answering the request")]
    NoAnswer,
    /// Too many calls of this credential (or of everyone) wait already.
    #[error("too many calls wait for input already ({MAX_PARKED} per credential, {MAX_PARKED_ALL} in all)")]
    Full,
}

impl Rounds {
    /// The parked calls of instance `instance` of a fleet.
    pub(crate) fn of_instance(instance: String) -> Self {
        Rounds {
            instance: Some(instance),
            ..Rounds::default()
        }
    }

    /// Waits for the call's next event, within `limit`; parks it when the upstream asks.
    pub(crate) async fn next(
        self: &Arc<Self>,
        owner: &str,
        call: &str,
        mut events: mpsc::Receiver<Event>,
        stop: CancellationToken,
        cancelled: &CancellationToken,
    ) -> Result<Round, Resume> {
        let event = tokio::select! {
            e = events.recv() => e,
            () = cancelled.cancelled() => {
                stop.cancel();
                None
            }
        };
        self.on(owner, call, event, events, stop)
    }

    /// What `event` of a call means for its round: its end, or a request that parks it.
    pub(crate) fn on(
        self: &Arc<Self>,
        owner: &str,
        call: &str,
        event: Option<Event>,
        events: mpsc::Receiver<Event>,
        stop: CancellationToken,
    ) -> Result<Round, Resume> {
        match event {
            None => Ok(Round::Done(Outcome::Invalid {
                why: "the call was cancelled".into(),
            })),
            Some(Event::Done(outcome)) => Ok(Round::Done(outcome)),
            Some(Event::Ask {
                request,
                reply,
                log,
            }) => {
                let Some(state) = warden_runtime::caller::random_id() else {
                    stop.cancel();
                    return Err(Resume::Full);
                };
                let state = match &self.instance {
                    Some(instance) => format!("wrs_{instance}_{state}"),
                    None => format!("wrs_{state}"),
                };
                {
                    let mut parked = self.parked.lock().map_err(|_| Resume::Full)?;
                    let mine = parked.values().filter(|p| p.owner == owner).count();
                    if mine >= MAX_PARKED || parked.len() >= MAX_PARKED_ALL {
                        stop.cancel();
                        return Err(Resume::Full);
                    }
                    parked.insert(
                        state.clone(),
                        Parked {
                            owner: owner.to_owned(),
                            call: call.to_owned(),
                            events,
                            reply,
                            stop,
                            log,
                        },
                    );
                }
                self.expire(state.clone());
                let mut requests = rmcp::model::InputRequests::new();
                requests.insert(KEY.to_owned(), *request);
                Ok(Round::Input(InputRequiredResult::new(
                    Some(requests),
                    Some(state),
                )))
            }
        }
    }

    /// Sends the log messages of the call parked under `state` (when `owner` parked it for
    /// `call`) to `to`: the stream of the retry that resumes it.
    pub(crate) fn redirect_log(&self, owner: &str, call: &str, state: &str, to: LogTo) {
        if let Ok(all) = self.parked.lock() {
            if let Some(p) = all
                .get(state)
                .filter(|p| p.owner == owner && p.call == call)
            {
                p.log.take_from(&to);
            }
        }
    }

    /// Resumes the call parked under `state` with the client's answer; then waits for its
    /// next event.
    pub(crate) async fn resume(
        self: &Arc<Self>,
        owner: &str,
        call: &str,
        state: &str,
        mut answers: InputResponses,
        cancelled: &CancellationToken,
    ) -> Result<Round, Resume> {
        let (parked, answer) = {
            let mut all = self.parked.lock().map_err(|_| Resume::Unknown)?;
            match all.get(state) {
                None => return Err(Resume::Unknown),
                Some(p) if p.owner != owner || p.call != call => return Err(Resume::NotYours),
                Some(_) => {}
            }
            let Some(answer) = answers.remove(KEY) else {
                return Err(Resume::NoAnswer);
            };
            (all.remove(state).ok_or(Resume::Unknown)?, answer)
        };
        let Parked {
            events,
            reply,
            stop,
            ..
        } = parked;
        let _ = reply.send(answer);
        self.next(owner, call, events, stop, cancelled).await
    }

    /// Cancels the call parked under `state` if it is still parked after [`PARK_TTL`].
    fn expire(self: &Arc<Self>, state: String) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(PARK_TTL).await;
            let Some(me) = weak.upgrade() else { return };
            let gone = me.parked.lock().ok().and_then(|mut p| p.remove(&state));
            if let Some(p) = gone {
                p.stop.cancel();
            }
        });
    }
}

/// The client of a 2026-07-28 call, as the upstream's requests reach it: each becomes the
/// input request of a round.
pub(crate) struct RoundsClient {
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) capabilities: Option<ClientCapabilities>,
    pub(crate) log: LogTo,
}

/// Where a 2026-07-28 call's log messages go: the stream of the request serving the call now
/// (its first, or the retry that resumed it), when that request asked for them (`_meta`
/// `io.modelcontextprotocol/logLevel`), at or above its level; nowhere otherwise.
#[derive(Clone, Default)]
pub(crate) struct LogTo(Arc<Mutex<Option<LogStream>>>);

/// A request's stream, and the least severe level it asked for.
type LogStream = (Peer<RoleServer>, LoggingLevel);

impl LogTo {
    /// To `peer`, at `level` and above; nowhere without a level.
    pub(crate) fn new(peer: &Peer<RoleServer>, level: Option<LoggingLevel>) -> Self {
        LogTo(Arc::new(Mutex::new(level.map(|l| (peer.clone(), l)))))
    }

    /// From now on, where `other` sends.
    fn take_from(&self, other: &LogTo) {
        let to = other.0.lock().ok().and_then(|o| o.clone());
        if let Ok(mut mine) = self.0.lock() {
            *mine = to;
        }
    }

    fn send(&self, params: LoggingMessageNotificationParam) {
        let Some((peer, least)) = self.0.lock().ok().and_then(|l| l.clone()) else {
            return;
        };
        if crate::mcp_client::severity(params.level) < crate::mcp_client::severity(least) {
            return;
        }
        tokio::spawn(async move {
            let _ = peer.notify_logging_message(params).await;
        });
    }
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<T, ErrorData>> + Send + 'static>>;

impl RoundsClient {
    fn ask<T>(&self, request: InputRequest) -> Answer<T>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let (events, log) = (self.events.clone(), self.log.clone());
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            events
                .send(Event::Ask {
                    request: Box::new(request),
                    reply,
                    log,
                })
                .await
                .map_err(|_| ErrorData::internal_error("the agent's call is gone", None))?;
            let value = answer.await.map_err(|_| {
                ErrorData::internal_error("the agent's client did not answer in time", None)
            })?;
            // The client may answer with an error object instead of a result.
            if let Ok(e) = serde_json::from_value::<ErrorData>(value.clone()) {
                return Err(e);
            }
            serde_json::from_value(value).map_err(|e| {
                ErrorData::invalid_params(format!("the agent's client answered: {e}"), None)
            })
        })
    }
}

impl ClientSide for RoundsClient {
    fn declares(&self, kind: ClientRequestKind) -> bool {
        crate::mcp_client::declares(self.capabilities.as_ref(), kind)
    }

    fn sample(&self, params: CreateMessageRequestParams) -> Answer<CreateMessageResult> {
        self.ask(InputRequest::CreateMessage(CreateMessageRequest::new(
            params,
        )))
    }

    fn elicit(&self, params: ElicitRequestParams) -> Answer<ElicitResult> {
        self.ask(InputRequest::Elicitation(ElicitRequest::new(params)))
    }

    fn roots(&self) -> Answer<ListRootsResult> {
        self.ask(InputRequest::ListRoots(ListRootsRequest::default()))
    }

    fn log(&self, params: LoggingMessageNotificationParam) {
        self.log.send(params);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> InputRequest {
        InputRequest::ListRoots(ListRootsRequest::default())
    }

    /// A call that asks once, then ends with `Invalid { why: answer }`.
    fn call_asking_once() -> (mpsc::Receiver<Event>, CancellationToken) {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let (reply, answer) = oneshot::channel();
            let _ = tx
                .send(Event::Ask {
                    request: Box::new(ask()),
                    reply,
                    log: LogTo::default(),
                })
                .await;
            let why = answer.await.map(|v| v.to_string()).unwrap_or_default();
            let _ = tx.send(Event::Done(Outcome::Invalid { why })).await;
        });
        (rx, CancellationToken::new())
    }

    fn state_of(round: Round) -> String {
        match round {
            Round::Input(i) => i.request_state.unwrap(),
            Round::Done(_) => panic!("expected an input round"),
        }
    }

    #[tokio::test]
    async fn a_parked_call_resumes_once_for_its_owner_and_tool_with_an_answer() {
        let rounds = Arc::new(Rounds::default());
        let never = CancellationToken::new();
        let (rx, stop) = call_asking_once();
        let round = rounds
            .next("cred-a", "t.x", rx, stop, &never)
            .await
            .unwrap();
        let state = state_of(round);
        let answer = |v: serde_json::Value| InputResponses::from([(KEY.to_owned(), v)]);
        // Another credential, another tool, no answer: refused, and the call stays parked.
        let e = rounds
            .resume("cred-b", "t.x", &state, answer(1.into()), &never)
            .await;
        assert!(matches!(e, Err(Resume::NotYours)));
        let e = rounds
            .resume("cred-a", "t.y", &state, answer(1.into()), &never)
            .await;
        assert!(matches!(e, Err(Resume::NotYours)));
        let e = rounds
            .resume("cred-a", "t.x", &state, InputResponses::new(), &never)
            .await;
        assert!(matches!(e, Err(Resume::NoAnswer)));
        let e = rounds
            .resume("cred-a", "t.x", "wrs_forged", answer(1.into()), &never)
            .await;
        assert!(matches!(e, Err(Resume::Unknown)));
        // The owner's answer reaches the call, which ends with it.
        let done = rounds
            .resume("cred-a", "t.x", &state, answer("yes".into()), &never)
            .await;
        assert!(matches!(done, Ok(Round::Done(Outcome::Invalid { why })) if why == "\"yes\""));
        // Used once.
        let e = rounds
            .resume("cred-a", "t.x", &state, answer(1.into()), &never)
            .await;
        assert!(matches!(e, Err(Resume::Unknown)));
    }

    #[tokio::test]
    async fn a_fleet_instance_names_itself_in_the_states_it_issues() {
        let never = CancellationToken::new();
        let alone = Arc::new(Rounds::default());
        let (rx, stop) = call_asking_once();
        let state = state_of(alone.next("cred-a", "t.x", rx, stop, &never).await.unwrap());
        assert_eq!(instance_of(&state), None);
        let fleet = Arc::new(Rounds::of_instance("i7".into()));
        let (rx, stop) = call_asking_once();
        let state = state_of(fleet.next("cred-a", "t.x", rx, stop, &never).await.unwrap());
        assert_eq!(instance_of(&state), Some("i7"));
        assert_eq!(instance_of("anything"), None);
    }

    #[tokio::test]
    async fn a_credential_parks_a_bounded_number_of_calls() {
        let rounds = Arc::new(Rounds::default());
        let never = CancellationToken::new();
        for _ in 0..MAX_PARKED {
            let (rx, stop) = call_asking_once();
            assert!(matches!(
                rounds.next("cred-a", "t.x", rx, stop, &never).await,
                Ok(Round::Input(_))
            ));
        }
        let (rx, stop) = call_asking_once();
        let e = rounds.next("cred-a", "t.x", rx, stop.clone(), &never).await;
        assert!(matches!(e, Err(Resume::Full)));
        assert!(stop.is_cancelled(), "the call over the bound is stopped");
        // Another credential is not held back by it.
        let (rx, stop) = call_asking_once();
        assert!(matches!(
            rounds.next("cred-b", "t.x", rx, stop, &never).await,
            Ok(Round::Input(_))
        ));
    }

    #[tokio::test]
    async fn a_caller_who_goes_away_stops_the_call() {
        let rounds = Arc::new(Rounds::default());
        let (_tx, rx) = mpsc::channel::<Event>(1);
        let (stop, gone) = (CancellationToken::new(), CancellationToken::new());
        gone.cancel();
        let r = rounds.next("cred-a", "t.x", rx, stop.clone(), &gone).await;
        assert!(matches!(r, Ok(Round::Done(Outcome::Invalid { .. }))));
        assert!(stop.is_cancelled());
    }
}
