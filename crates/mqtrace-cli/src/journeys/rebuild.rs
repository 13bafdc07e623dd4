//! Rebuilds each request's journey from a [`SpanSet`]: request send → the batch `process` span
//! that links to it (found by its links, or from the reply's link back) → the batch's stage
//! spans → the reply send span in the request's trace → the reply's consumer.
//!
//! What counts as a request: a PRODUCER span to a destination that batch spans consume
//! (CONSUMER spans with `messaging.batch.message_count`), outside any batch's trace. Stages
//! are laid end to end on one cursor from the request's send start: each stage starts where
//! the previous ended (or where its span starts, the gap becoming an explicit `untraced`
//! stage), so the stages of a journey always add up to its end-to-end latency.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::otlp_json::{Kind, SpanRecord, SpanRef, SpanSet};

/// The stages of a journey, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The request's send span: serialising, the broker's acknowledgement.
    Produce,
    /// In the queue: send end → the worker started collecting its batch.
    QueueWait,
    /// Waiting for the batch to fill (`mqtrace.batch.formation_ms`).
    BatchWait,
    /// `features.fetch`.
    FeatureFetch,
    /// `features.preprocess`.
    Preprocess,
    /// `model.execute`.
    ModelExecute,
    /// `postprocess`.
    Postprocess,
    /// The reply's send span.
    ReplySend,
    /// Reply send end → the caller finished processing the reply.
    ReplyDelivery,
    /// Time no span covers.
    Untraced,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 10] = [
        Stage::Produce,
        Stage::QueueWait,
        Stage::BatchWait,
        Stage::FeatureFetch,
        Stage::Preprocess,
        Stage::ModelExecute,
        Stage::Postprocess,
        Stage::ReplySend,
        Stage::ReplyDelivery,
        Stage::Untraced,
    ];

    /// The stage's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Produce => "produce",
            Stage::QueueWait => "queue_wait",
            Stage::BatchWait => "batch_wait",
            Stage::FeatureFetch => "feature_fetch",
            Stage::Preprocess => "preprocess",
            Stage::ModelExecute => "model_execute",
            Stage::Postprocess => "postprocess",
            Stage::ReplySend => "reply_send",
            Stage::ReplyDelivery => "reply_delivery",
            Stage::Untraced => "untraced",
        }
    }

    fn batch_child(self) -> Option<&'static str> {
        match self {
            Stage::FeatureFetch => Some("features.fetch"),
            Stage::Preprocess => Some("features.preprocess"),
            Stage::ModelExecute => Some("model.execute"),
            Stage::Postprocess => Some("postprocess"),
            _ => None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a journey: a stage, when it ran, and the span that accounts for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The stage.
    pub stage: Stage,
    /// Start, ns since the epoch.
    pub start_ns: u64,
    /// End, ns since the epoch.
    pub end_ns: u64,
    /// The span behind it (none for `queue_wait`, `batch_wait` and `untraced`).
    pub span: Option<SpanRef>,
}

impl Step {
    /// Its duration in milliseconds.
    pub fn ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

/// A phase of the model execution on its device (`cpu.compute`, `gpu.h2d`...).
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// The phase span's name.
    pub name: String,
    /// Its wall-clock duration in milliseconds.
    pub ms: f64,
    /// Device time (CUDA events), when the span has it.
    pub device_ms: Option<f64>,
}

/// Why a request's journey could not be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokenReason {
    /// No batch span links to the request and no reply is in its trace: the trace headers
    /// were lost between the producer and the worker.
    ContextLost,
    /// A reply in the request's trace links to a batch span that does not link back.
    MissingLink,
    /// A batch took the request, but no reply is in the request's trace.
    NoReply,
    /// The reply links to a batch span that is not in the telemetry read.
    BatchNotExported,
}

impl BrokenReason {
    /// The reason's code in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokenReason::ContextLost => "context_lost",
            BrokenReason::MissingLink => "missing_link",
            BrokenReason::NoReply => "no_reply",
            BrokenReason::BatchNotExported => "batch_not_exported",
        }
    }

    /// What it means, in words.
    pub fn explain(self) -> &'static str {
        match self {
            BrokenReason::ContextLost => {
                "no batch span links to the request and no reply is in its trace: the trace headers were lost between producer and worker"
            }
            BrokenReason::MissingLink => {
                "the reply links to a batch span that does not link back to the request"
            }
            BrokenReason::NoReply => {
                "a batch took the request but no reply is in the request's trace (sent without its context?)"
            }
            BrokenReason::BatchNotExported => {
                "the reply links to a batch span that is not in the telemetry read"
            }
        }
    }
}

/// How a request's journey ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Rebuilt from send to reply.
    Complete,
    /// The worker sent it to a dead-letter destination.
    DeadLettered,
    /// The chain is broken.
    Broken(BrokenReason),
}

/// One request's journey.
#[derive(Debug, Clone)]
pub struct Journey {
    /// The request's send span.
    pub request: SpanRef,
    /// Where the request was sent.
    pub destination: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The batch span that served it.
    pub batch: Option<SpanRef>,
    /// How many batches linked it (more than one: it was delivered again).
    pub deliveries: usize,
    /// Its steps, end to end, in order; empty unless complete.
    pub steps: Vec<Step>,
    /// The model's device phases in its batch.
    pub phases: Vec<Phase>,
}

impl Journey {
    /// End-to-end latency in ms: first step start → last step end.
    pub fn total_ms(&self) -> f64 {
        match (self.steps.first(), self.steps.last()) {
            (Some(first), Some(last)) => last.end_ns.saturating_sub(first.start_ns) as f64 / 1e6,
            _ => 0.0,
        }
    }

    /// Time per stage in ms (`untraced` summed over its gaps).
    pub fn stage_ms(&self, stage: Stage) -> f64 {
        self.steps
            .iter()
            .filter(|s| s.stage == stage)
            .map(Step::ms)
            .sum()
    }

    /// The stage the request spent longest in.
    pub fn dominant(&self) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .map(|stage| (stage, self.stage_ms(stage)))
            .filter(|(_, ms)| *ms > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(stage, _)| stage)
    }

    /// Its critical path: the steps that took time, in order. A journey through a queue and
    /// a batch is one chain, so every step on it is on the critical path.
    pub fn critical_path(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.end_ns > s.start_ns)
    }
}

/// Every request's journey, plus what the rebuild saw.
#[derive(Debug, Default)]
pub struct Journeys {
    /// One per request, in the order the requests were sent.
    pub journeys: Vec<Journey>,
    /// Batch spans seen.
    pub batches: usize,
    /// Spans read.
    pub spans: usize,
}

/// Indexes over the spans.
struct Index<'s> {
    spans: &'s [SpanRecord],
    by_id: HashMap<SpanRef, usize>,
    children: HashMap<SpanRef, Vec<usize>>,
    /// Batch span index → is a batch.
    batches: HashSet<usize>,
    /// A linked span → the batch spans whose links (own or `batch.links` children) hold it.
    linked_by: HashMap<SpanRef, Vec<usize>>,
    /// A linked span → other spans that link to it (dead-letter sends, replies...).
    linkers: HashMap<SpanRef, Vec<usize>>,
}

impl<'s> Index<'s> {
    fn new(spans: &'s [SpanRecord]) -> Self {
        let mut by_id = HashMap::with_capacity(spans.len());
        let mut children: HashMap<SpanRef, Vec<usize>> = HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            by_id.insert(span.id, i);
            if let Some(parent) = span.parent() {
                children.entry(parent).or_default().push(i);
            }
        }
        let batches: HashSet<usize> = spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == Kind::Consumer && s.batch_message_count.is_some())
            .map(|(i, _)| i)
            .collect();
        let mut linked_by: HashMap<SpanRef, Vec<usize>> = HashMap::new();
        let mut linkers: HashMap<SpanRef, Vec<usize>> = HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            let owner = if batches.contains(&i) {
                Some(i)
            } else if &*span.name == "batch.links" {
                span.parent()
                    .and_then(|p| by_id.get(&p).copied())
                    .filter(|p| batches.contains(p))
            } else {
                None
            };
            for link in &span.links {
                match owner {
                    Some(batch) => linked_by.entry(*link).or_default().push(batch),
                    None => linkers.entry(*link).or_default().push(i),
                }
            }
        }
        Self {
            spans,
            by_id,
            children,
            batches,
            linked_by,
            linkers,
        }
    }

    /// Whether `id` is a batch span that was read.
    fn is_batch(&self, id: &SpanRef) -> bool {
        self.by_id.get(id).is_some_and(|i| self.batches.contains(i))
    }

    fn get(&self, id: SpanRef) -> Option<&'s SpanRecord> {
        self.by_id.get(&id).map(|&i| &self.spans[i])
    }

    fn children(&self, id: SpanRef) -> impl Iterator<Item = &'s SpanRecord> + '_ {
        self.children
            .get(&id)
            .into_iter()
            .flatten()
            .map(|&i| &self.spans[i])
    }

    /// The descendants of `root` (not `root` itself), breadth first.
    fn descendants(&self, root: SpanRef) -> Vec<&'s SpanRecord> {
        let mut found = Vec::new();
        let mut queue = vec![root];
        while let Some(id) = queue.pop() {
            for child in self.children(id) {
                found.push(child);
                queue.push(child.id);
            }
        }
        found
    }

    fn batch_child(&self, batch: SpanRef, name: &str) -> Option<&'s SpanRecord> {
        self.children(batch).find(|c| &*c.name == name)
    }
}

/// Rebuilds every request's journey.
pub fn rebuild(set: &SpanSet) -> Journeys {
    let index = Index::new(&set.spans);
    let request_destinations: HashSet<&str> = index
        .batches
        .iter()
        .filter_map(|&i| set.spans[i].destination.as_deref())
        .collect();
    let batch_traces: HashSet<u128> = index
        .batches
        .iter()
        .map(|&i| set.spans[i].id.trace_id)
        .collect();
    let mut requests: Vec<&SpanRecord> = set
        .spans
        .iter()
        .filter(|s| {
            s.kind == Kind::Producer
                && !batch_traces.contains(&s.id.trace_id)
                && s.destination
                    .as_deref()
                    .is_some_and(|d| request_destinations.contains(d))
        })
        .collect();
    requests.sort_by_key(|s| (s.start_ns, s.id));
    // A request may be in the input twice (the same file read twice, a retried export).
    requests.dedup_by_key(|s| s.id);

    let journeys = requests
        .into_iter()
        .map(|request| rebuild_one(&index, request))
        .collect();
    Journeys {
        journeys,
        batches: index.batches.len(),
        spans: set.spans.len(),
    }
}

fn rebuild_one(index: &Index<'_>, request: &SpanRecord) -> Journey {
    let destination = request
        .destination
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    let linking_batches: Vec<&SpanRecord> = index
        .linked_by
        .get(&request.id)
        .into_iter()
        .flatten()
        .map(|&i| &index.spans[i])
        .collect();
    // The reply: a PRODUCER span below the request in its trace, to another destination; the
    // first one that links to a batch (a redelivered request has several).
    let mut replies: Vec<&SpanRecord> = index
        .descendants(request.id)
        .into_iter()
        .filter(|s| s.kind == Kind::Producer && s.destination != request.destination)
        .collect();
    replies.sort_by_key(|s| (s.end_ns, s.id));
    let reply_batch = |reply: &SpanRecord| -> Option<SpanRef> {
        reply.links.iter().copied().find(|l| index.is_batch(l))
    };
    let reply = replies
        .iter()
        .find(|r| reply_batch(r).is_some())
        .or(replies.first())
        .copied();

    let broken = |reason| Journey {
        request: request.id,
        destination: destination.clone(),
        outcome: Outcome::Broken(reason),
        batch: None,
        deliveries: linking_batches.len(),
        steps: Vec::new(),
        phases: Vec::new(),
    };

    let Some(reply) = reply else {
        // Dead-lettered: a send in a batch's trace linking to the request.
        let dead_letter = index
            .linkers
            .get(&request.id)
            .into_iter()
            .flatten()
            .map(|&i| &index.spans[i])
            .find(|s| s.kind == Kind::Producer && s.id.trace_id != request.id.trace_id);
        if let Some(dead_letter) = dead_letter {
            let batch = dead_letter.parent().filter(|p| index.is_batch(p));
            return Journey {
                request: request.id,
                destination,
                outcome: Outcome::DeadLettered,
                batch,
                deliveries: linking_batches.len().max(1),
                steps: Vec::new(),
                phases: Vec::new(),
            };
        }
        return broken(if linking_batches.is_empty() {
            BrokenReason::ContextLost
        } else {
            BrokenReason::NoReply
        });
    };

    // The batch: the one the reply links to, if it also links the request; else the first
    // that links the request.
    let batch = match reply_batch(reply) {
        Some(id) if linking_batches.iter().any(|b| b.id == id) => index.get(id),
        Some(_) if linking_batches.is_empty() => return broken(BrokenReason::MissingLink),
        None if linking_batches.is_empty() => {
            let claimed = !reply.links.is_empty();
            return broken(if claimed {
                BrokenReason::BatchNotExported
            } else {
                BrokenReason::ContextLost
            });
        }
        _ => linking_batches.first().copied(),
    };
    let Some(batch) = batch else {
        return broken(BrokenReason::BatchNotExported);
    };

    let reply_consumer = index
        .children(reply.id)
        .filter(|c| c.kind == Kind::Consumer)
        .min_by_key(|c| c.end_ns);
    let model = index.batch_child(batch.id, "model.execute");
    let phases = model
        .map(|model| {
            let mut phases: Vec<&SpanRecord> = index.children(model.id).collect();
            phases.sort_by_key(|p| p.start_ns);
            phases
                .into_iter()
                .map(|p| Phase {
                    name: p.name.to_string(),
                    ms: p.duration_ns() as f64 / 1e6,
                    device_ms: p.device_ms,
                })
                .collect()
        })
        .unwrap_or_default();

    let formation_ns = batch
        .batch_formation_ms
        .map(|ms| (ms.max(0.0) * 1e6) as u64)
        .unwrap_or(0);
    let batch_open = batch.start_ns.saturating_sub(formation_ns);
    let mut timeline = Timeline::new(request.start_ns);
    timeline.push(
        Stage::Produce,
        request.start_ns,
        request.end_ns,
        Some(request.id),
    );
    timeline.push(Stage::QueueWait, request.end_ns, batch_open, None);
    timeline.push(Stage::BatchWait, batch_open, batch.start_ns, None);
    for stage in [
        Stage::FeatureFetch,
        Stage::Preprocess,
        Stage::ModelExecute,
        Stage::Postprocess,
    ] {
        let name = stage.batch_child().unwrap_or_default();
        if let Some(span) = index.batch_child(batch.id, name) {
            timeline.push(stage, span.start_ns, span.end_ns, Some(span.id));
        }
    }
    timeline.push(
        Stage::ReplySend,
        reply.start_ns,
        reply.end_ns,
        Some(reply.id),
    );
    if let Some(consumer) = reply_consumer {
        timeline.push(
            Stage::ReplyDelivery,
            reply.end_ns,
            consumer.end_ns,
            Some(consumer.id),
        );
    }

    Journey {
        request: request.id,
        destination,
        outcome: Outcome::Complete,
        batch: Some(batch.id),
        deliveries: linking_batches.len(),
        steps: timeline.steps,
        phases,
    }
}

/// Lays stages end to end: each starts at the later of its span's start and the previous
/// stage's end; a gap becomes an `untraced` step. So the steps always cover
/// first start → last end exactly once.
struct Timeline {
    cursor: u64,
    steps: Vec<Step>,
}

impl Timeline {
    fn new(start_ns: u64) -> Self {
        Self {
            cursor: start_ns,
            steps: Vec::new(),
        }
    }

    fn push(&mut self, stage: Stage, start_ns: u64, end_ns: u64, span: Option<SpanRef>) {
        if start_ns > self.cursor {
            self.steps.push(Step {
                stage: Stage::Untraced,
                start_ns: self.cursor,
                end_ns: start_ns,
                span: None,
            });
            self.cursor = start_ns;
        }
        let end = end_ns.max(self.cursor);
        self.steps.push(Step {
            stage,
            start_ns: self.cursor,
            end_ns: end,
            span,
        });
        self.cursor = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn span(
        trace: u128,
        id: u64,
        parent: u64,
        name: &str,
        kind: Kind,
        start: u64,
        end: u64,
    ) -> SpanRecord {
        SpanRecord {
            id: SpanRef {
                trace_id: trace,
                span_id: id,
            },
            parent_span_id: parent,
            name: Arc::from(name),
            kind,
            start_ns: start * 1_000_000,
            end_ns: end * 1_000_000,
            destination: None,
            batch_message_count: None,
            batch_formation_ms: None,
            device_ms: None,
            links: Vec::new(),
            error: false,
        }
    }

    fn to(mut s: SpanRecord, destination: &str) -> SpanRecord {
        s.destination = Some(Arc::from(destination));
        s
    }

    fn r(trace: u128, id: u64) -> SpanRef {
        SpanRef {
            trace_id: trace,
            span_id: id,
        }
    }

    /// Request trace 1 (send 0–2 ms, reply send 40–45, caller processes it 47–50) and batch
    /// trace 9 (starts 20 after 5 ms of formation; fetch 21–24, preprocess 24–25, model
    /// 25–35 with a cpu.compute phase, postprocess 35–37).
    fn scenario() -> Vec<SpanRecord> {
        let mut batch = to(
            span(9, 90, 0, "process requests", Kind::Consumer, 20, 60),
            "requests",
        );
        batch.batch_message_count = Some(1);
        batch.batch_formation_ms = Some(5.0);
        batch.links.push(r(1, 10));
        let mut reply = to(
            span(1, 11, 10, "send replies", Kind::Producer, 40, 45),
            "replies",
        );
        reply.links.push(r(9, 90));
        vec![
            to(
                span(1, 10, 0, "send requests", Kind::Producer, 0, 2),
                "requests",
            ),
            batch,
            span(9, 91, 90, "features.fetch", Kind::Internal, 21, 24),
            span(9, 92, 90, "features.preprocess", Kind::Internal, 24, 25),
            span(9, 93, 90, "model.execute", Kind::Internal, 25, 35),
            span(9, 94, 93, "cpu.compute", Kind::Internal, 25, 34),
            span(9, 95, 90, "postprocess", Kind::Internal, 35, 37),
            reply,
            span(1, 12, 11, "process replies", Kind::Consumer, 47, 50),
        ]
    }

    fn journeys(spans: Vec<SpanRecord>) -> Journeys {
        let mut set = SpanSet::new();
        set.spans = spans;
        rebuild(&set)
    }

    #[test]
    fn stages_are_laid_end_to_end_with_gaps_made_explicit() {
        let rebuilt = journeys(scenario());
        assert_eq!(rebuilt.batches, 1);
        let journey = &rebuilt.journeys[0];
        assert_eq!(journey.outcome, Outcome::Complete);
        assert_eq!(journey.batch, Some(r(9, 90)));
        let stages: Vec<(&str, f64)> = journey
            .steps
            .iter()
            .map(|s| (s.stage.as_str(), s.ms()))
            .collect();
        assert_eq!(
            stages,
            [
                ("produce", 2.0),
                ("queue_wait", 13.0),
                ("batch_wait", 5.0),
                ("untraced", 1.0),
                ("feature_fetch", 3.0),
                ("preprocess", 1.0),
                ("model_execute", 10.0),
                ("postprocess", 2.0),
                ("untraced", 3.0),
                ("reply_send", 5.0),
                ("reply_delivery", 5.0),
            ]
        );
        assert_eq!(journey.total_ms(), 50.0);
        let sum: f64 = journey.steps.iter().map(Step::ms).sum();
        assert_eq!(sum, journey.total_ms());
        assert_eq!(journey.stage_ms(Stage::Untraced), 4.0);
        assert_eq!(journey.dominant(), Some(Stage::QueueWait));
        assert_eq!(journey.phases[0].name, "cpu.compute");
        assert_eq!(journey.phases[0].ms, 9.0);
    }

    #[test]
    fn a_message_that_arrived_during_batch_formation_has_no_queue_wait() {
        let mut spans = scenario();
        spans[1].batch_formation_ms = Some(19.0); // opened at 1 ms, before the send ended
        let journey = &journeys(spans).journeys[0];
        assert_eq!(journey.stage_ms(Stage::QueueWait), 0.0);
        assert_eq!(journey.stage_ms(Stage::BatchWait), 18.0);
        assert_eq!(journey.total_ms(), 50.0);
    }

    #[test]
    fn broken_chains_get_their_reason() {
        // The worker lost the header: the batch links nothing, the reply is in a new trace.
        let mut lost = scenario();
        lost[1].links.clear();
        lost[7].id.trace_id = 5;
        lost[7].parent_span_id = 0;
        assert_eq!(
            journeys(lost).journeys[0].outcome,
            Outcome::Broken(BrokenReason::ContextLost)
        );
        // The reply is in the request's trace and links the batch, which does not link back.
        let mut unlinked = scenario();
        unlinked[1].links.clear();
        assert_eq!(
            journeys(unlinked).journeys[0].outcome,
            Outcome::Broken(BrokenReason::MissingLink)
        );
        // The batch links the request, but no reply is in its trace.
        let mut no_reply = scenario();
        no_reply.remove(8);
        no_reply.remove(7);
        assert_eq!(
            journeys(no_reply).journeys[0].outcome,
            Outcome::Broken(BrokenReason::NoReply)
        );
        // The reply links a batch span that was never exported (another batch was).
        let mut missing = scenario();
        missing[1].links.clear();
        missing[7].links[0].span_id = 0xdead;
        assert_eq!(
            journeys(missing).journeys[0].outcome,
            Outcome::Broken(BrokenReason::BatchNotExported)
        );
    }

    #[test]
    fn dead_lettered_requests_are_their_own_outcome() {
        let mut spans = scenario();
        spans.truncate(7); // no reply
        let mut dead_letter = to(
            span(9, 96, 90, "send requests.dlq", Kind::Producer, 37, 38),
            "requests.dlq",
        );
        dead_letter.links.push(r(1, 10));
        spans.push(dead_letter);
        let journey = &journeys(spans).journeys[0];
        assert_eq!(journey.outcome, Outcome::DeadLettered);
        assert_eq!(journey.batch, Some(r(9, 90)));
    }

    #[test]
    fn links_on_batch_links_children_count_for_their_batch() {
        let mut spans = scenario();
        spans[1].links.clear();
        let mut overflow = span(9, 97, 90, "batch.links", Kind::Internal, 20, 20);
        overflow.links.push(r(1, 10));
        spans.push(overflow);
        let journey = &journeys(spans).journeys[0];
        assert_eq!(journey.outcome, Outcome::Complete);
        assert_eq!(journey.batch, Some(r(9, 90)));
    }

    #[test]
    fn a_redelivered_request_counts_its_deliveries_and_uses_the_answering_batch() {
        let mut spans = scenario();
        let mut earlier = to(
            span(8, 80, 0, "process requests", Kind::Consumer, 10, 19),
            "requests",
        );
        earlier.batch_message_count = Some(1);
        earlier.links.push(r(1, 10));
        spans.push(earlier);
        let journey = &journeys(spans).journeys[0];
        assert_eq!(journey.deliveries, 2);
        assert_eq!(
            journey.batch,
            Some(r(9, 90)),
            "the batch the reply links to"
        );
    }
}
