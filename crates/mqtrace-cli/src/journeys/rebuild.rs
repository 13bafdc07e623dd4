//! Rebuilds each request's journey from a [`SpanSet`]: request send → the batch `process` span
//! that links to it (found by its links, or from the reply's link back) → the batch's stage
//! spans → the reply send span in the request's trace → the reply's consumer.
//!
//! What counts as a request: a PRODUCER span to a destination that batch spans consume
//! (CONSUMER spans with `messaging.batch.message_count`, and their `batch.links` children),
//! outside any batch's trace; and a request whose send span is missing but that shows
//! downstream (see *Requests seen only downstream*). Stages are laid end to end on one cursor
//! from the request's send start: each stage starts where the previous ended (or where its
//! span starts, the gap becoming an explicit `untraced` stage), so the stages of a journey
//! always add up to its end-to-end latency.
//!
//! # Breaks and gaps
//!
//! A journey that cannot be rebuilt end to end is either [`Outcome::Broken`] — the trace
//! context really did not go on — or [`Outcome::Incomplete`] — a span is missing from the
//! telemetry read (dropped by a full export queue or a failed export, or written by a process
//! whose files were not given). The rules, in the order they are tried:
//!
//! | what the spans show | outcome |
//! |---|---|
//! | reply in the request's trace links a batch span that links the request (or no batch, but some batch links the request) | complete |
//! | a dead-letter send (in a batch's trace) links the request | dead-lettered |
//! | reply links a batch span that does not link the request, and that batch has fewer `batch.links` children than its `mqtrace.batch.link_spans` | [`Gap::SpanMissing`]: the child with the request's link was dropped |
//! | … and the batch's link spans are all there | [`BrokenReason::MissingLink`] |
//! | reply links only spans that were not read | [`Gap::BatchNotExported`] |
//! | reply in the request's trace links nothing, and no batch links the request | [`BrokenReason::MissingLink`]: the context went on, the links did not |
//! | no reply, but a span in the request's trace whose parent was not read (e.g. the caller's `process` of the reply, its `send` dropped) | [`Gap::SpanMissing`] |
//! | no reply; a batch links the request; spans were dropped | [`Gap::TelemetryDropped`] |
//! | no reply; a batch links the request; nothing dropped | [`BrokenReason::NoReply`] |
//! | no reply, nothing links the request, nothing below it; spans were dropped | [`Gap::TelemetryDropped`] |
//! | … and nothing dropped | [`BrokenReason::ContextLost`] |
//!
//! "Spans were dropped" is what the pipeline's `mqtrace.telemetry.spans.dropped` counter said
//! ([`rebuild_with`]); with spans dropped, the absence of downstream spans proves nothing, so
//! no journey is called `context_lost` or `no_reply` on absence alone. A span in the request's
//! trace whose parent is missing proves the context went on whatever the counter says. A trace
//! holding several requests shares that evidence among them: each of its requests with a
//! missing reply counts the trace's orphan spans as its own.
//!
//! # Requests seen only downstream
//!
//! A request whose send span is missing is still a journey ([`Gap::StartMissing`], or
//! dead-lettered), keyed by the send span's id as the downstream spans carry it: the target
//! of a batch span's (or a `batch.links` span's) link, of a dead-letter send's link, or the
//! parent of a reply send that links into a batch's trace. Only requests that left no span at
//! all are not found here; the report counts them from the producers' metrics.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use super::metrics_json::DroppedSpans;
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

/// Why a request's journey is broken: the trace context did not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokenReason {
    /// No batch span links to the request, no reply is in its trace and nothing below it was
    /// seen, while no span was dropped: the trace headers were lost between the producer and
    /// the worker.
    ContextLost,
    /// The reply is in the request's trace, but it and the batch do not link each other.
    MissingLink,
    /// A batch took the request, but no reply is in the request's trace, while no span was
    /// dropped.
    NoReply,
}

impl BrokenReason {
    /// The reason's code in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokenReason::ContextLost => "context_lost",
            BrokenReason::MissingLink => "missing_link",
            BrokenReason::NoReply => "no_reply",
        }
    }

    /// What it means, in words.
    pub fn explain(self) -> &'static str {
        match self {
            BrokenReason::ContextLost => {
                "no batch span links to the request and no reply is in its trace: the trace headers were lost between producer and worker"
            }
            BrokenReason::MissingLink => {
                "the reply is in the request's trace but links no batch span that links back to the request"
            }
            BrokenReason::NoReply => {
                "a batch took the request but no reply is in the request's trace (sent without its context?)"
            }
        }
    }
}

/// Why a request's journey is incomplete: spans are missing from the telemetry read, so
/// the chain is cut although the context went on (or may have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Gap {
    /// A span on the chain is missing and the context provably went on past it: a span in
    /// the request's trace hangs under a span that was not read, or the batch lacks the
    /// `batch.links` child that held the request's link.
    SpanMissing,
    /// The request's send span is missing; the request is known from downstream (a batch
    /// link to it, a reply under it, a dead-letter link).
    StartMissing,
    /// The reply links to a batch span that is not in the telemetry read.
    BatchNotExported,
    /// The chain stops after the request (or after its batch) with nothing to show whether
    /// the context went on, and the pipeline dropped spans: most likely these.
    TelemetryDropped,
}

impl Gap {
    /// The gap's code in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Gap::SpanMissing => "span_missing",
            Gap::StartMissing => "start_missing",
            Gap::BatchNotExported => "batch_not_exported",
            Gap::TelemetryDropped => "telemetry_dropped",
        }
    }

    /// What it means, in words.
    pub fn explain(self) -> &'static str {
        match self {
            Gap::SpanMissing => {
                "a span of the journey is missing from the telemetry (dropped, or from a process not read), but the trace provably went on past it"
            }
            Gap::StartMissing => {
                "the request's send span is missing; the request shows downstream (batch link, reply or dead letter)"
            }
            Gap::BatchNotExported => {
                "the reply links to a batch span that is not in the telemetry read"
            }
            Gap::TelemetryDropped => {
                "nothing after this point of the journey was read, and the pipeline dropped spans: a drop, not provably a break"
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
    /// The chain is broken: the context did not go on.
    Broken(BrokenReason),
    /// The chain is cut where telemetry is missing.
    Incomplete(Gap),
}

/// One request's journey.
#[derive(Debug, Clone)]
pub struct Journey {
    /// The request's send span (as the downstream spans name it when it was not read).
    pub request: SpanRef,
    /// Whether the send span was read (false: the request is known from downstream only).
    pub request_read: bool,
    /// Where the request was sent (empty when neither it nor its batch was read).
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
    /// One per request, in the order the requests were sent (those seen only downstream at
    /// the time their batch or reply started).
    pub journeys: Vec<Journey>,
    /// Batch spans seen.
    pub batches: usize,
    /// Spans read.
    pub spans: usize,
    /// The destinations batch spans consume: where requests go.
    pub request_destinations: BTreeSet<String>,
    /// Spans the pipeline reported dropped.
    pub dropped: DroppedSpans,
}

/// Indexes over the spans.
struct Index<'s> {
    spans: &'s [SpanRecord],
    by_id: HashMap<SpanRef, usize>,
    children: HashMap<SpanRef, Vec<usize>>,
    /// Batch span index → is a batch.
    batches: HashSet<usize>,
    /// Trace ids of batch spans and of `batch.links` spans.
    batch_traces: HashSet<u128>,
    /// A linked span → the batch spans whose links (own or `batch.links` children) hold it.
    linked_by: HashMap<SpanRef, Vec<usize>>,
    /// Spans linked from a `batch.links` span whose batch span was not read → that span.
    linked_by_orphan_links: HashMap<SpanRef, usize>,
    /// A linked span → other spans that link to it (dead-letter sends, replies...).
    linkers: HashMap<SpanRef, Vec<usize>>,
    /// A batch span → its `batch.links` children read.
    link_spans_read: HashMap<SpanRef, usize>,
    /// Per trace, the spans whose parent was not read.
    orphans: HashMap<u128, Vec<usize>>,
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
        let mut index = Self {
            spans,
            by_id,
            children,
            batch_traces: HashSet::new(),
            batches,
            linked_by: HashMap::new(),
            linked_by_orphan_links: HashMap::new(),
            linkers: HashMap::new(),
            link_spans_read: HashMap::new(),
            orphans: HashMap::new(),
        };
        index.index_links_and_orphans();
        index
    }

    fn index_links_and_orphans(&mut self) {
        for (i, span) in self.spans.iter().enumerate() {
            let parent = span.parent();
            let parent_read = parent.and_then(|p| self.by_id.get(&p).copied());
            if parent.is_some() && parent_read.is_none() {
                self.orphans.entry(span.id.trace_id).or_default().push(i);
            }
            let is_link_span = &*span.name == "batch.links";
            let owner = if self.batches.contains(&i) {
                Some(i)
            } else if is_link_span {
                parent_read.filter(|p| self.batches.contains(p))
            } else {
                None
            };
            if self.batches.contains(&i) || is_link_span {
                self.batch_traces.insert(span.id.trace_id);
            }
            if let (true, Some(batch)) = (is_link_span, owner) {
                *self
                    .link_spans_read
                    .entry(self.spans[batch].id)
                    .or_default() += 1;
            }
            for link in &span.links {
                match owner {
                    Some(batch) => self.linked_by.entry(*link).or_default().push(batch),
                    None if is_link_span => {
                        self.linked_by_orphan_links.insert(*link, i);
                    }
                    None => self.linkers.entry(*link).or_default().push(i),
                }
            }
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

    /// The descendants of `root` (not `root` itself, which need not have been read),
    /// breadth first.
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

    /// The batch spans that link `request`.
    fn linking_batches(&self, request: SpanRef) -> Vec<&'s SpanRecord> {
        self.linked_by
            .get(&request)
            .into_iter()
            .flatten()
            .map(|&i| &self.spans[i])
            .collect()
    }

    /// Whether some of `batch`'s `batch.links` children were not read.
    fn link_spans_missing(&self, batch: &SpanRecord) -> bool {
        let expected = batch.batch_link_spans.unwrap_or(0).max(0) as usize;
        self.link_spans_read.get(&batch.id).copied().unwrap_or(0) < expected
    }

    /// Whether a span in `request`'s trace hangs under a span that was not read, other than
    /// the request itself and its ancestors: the trace went on past a missing span.
    fn went_on_past_a_missing_span(&self, request: SpanRef) -> bool {
        let mut ancestry = HashSet::from([request.span_id]);
        let mut cursor = self.get(request).and_then(SpanRecord::parent);
        while let Some(parent) = cursor {
            if !ancestry.insert(parent.span_id) {
                break; // a cycle in bad data
            }
            cursor = self.get(parent).and_then(SpanRecord::parent);
        }
        self.orphans
            .get(&request.trace_id)
            .into_iter()
            .flatten()
            .any(|&i| !ancestry.contains(&self.spans[i].id.span_id))
    }

    /// The dead-letter send for `request`: a send in a batch's trace that links to it.
    fn dead_letter(&self, request: SpanRef) -> Option<&'s SpanRecord> {
        self.linkers
            .get(&request)
            .into_iter()
            .flatten()
            .map(|&i| &self.spans[i])
            .find(|s| s.kind == Kind::Producer && s.id.trace_id != request.trace_id)
    }
}

/// Rebuilds every request's journey, knowing nothing of dropped spans (as if none were).
pub fn rebuild(set: &SpanSet) -> Journeys {
    rebuild_with(set, &DroppedSpans::default())
}

/// Rebuilds every request's journey; `dropped` is what the pipeline reported lost (see the
/// module docs for how it changes the outcomes).
pub fn rebuild_with(set: &SpanSet, dropped: &DroppedSpans) -> Journeys {
    let index = Index::new(&set.spans);
    let request_destinations: BTreeSet<String> = set
        .spans
        .iter()
        .enumerate()
        .filter(|(i, s)| index.batches.contains(i) || &*s.name == "batch.links")
        .filter_map(|(_, s)| s.destination.as_deref())
        .map(str::to_owned)
        .collect();
    let mut requests: Vec<&SpanRecord> = set
        .spans
        .iter()
        .filter(|s| {
            s.kind == Kind::Producer
                && !index.batch_traces.contains(&s.id.trace_id)
                && s.destination
                    .as_deref()
                    .is_some_and(|d| request_destinations.contains(d))
        })
        .collect();
    requests.sort_by_key(|s| (s.start_ns, s.id));
    // A request may be in the input twice (the same file read twice, a retried export).
    requests.dedup_by_key(|s| s.id);

    let context = Rebuild {
        index: &index,
        spans_dropped: dropped.any(),
    };
    let mut journeys: Vec<(u64, Journey)> = requests
        .into_iter()
        .map(|request| (request.start_ns, context.journey(request)))
        .collect();
    journeys.extend(
        unseen_requests(&index, &request_destinations)
            .into_iter()
            .map(|request| context.unseen_journey(request)),
    );
    journeys.sort_by_key(|(start, journey)| (*start, journey.request));
    Journeys {
        journeys: journeys.into_iter().map(|(_, journey)| journey).collect(),
        batches: index.batches.len(),
        spans: set.spans.len(),
        request_destinations,
        dropped: dropped.clone(),
    }
}

/// Send spans that downstream spans name but that were not read: link targets of batch and
/// `batch.links` spans and of dead-letter sends, and the parents of reply sends that link
/// into a batch's trace.
fn unseen_requests(index: &Index<'_>, request_destinations: &BTreeSet<String>) -> Vec<SpanRef> {
    let outside_batches =
        |id: &SpanRef| !index.by_id.contains_key(id) && !index.batch_traces.contains(&id.trace_id);
    let mut unseen: BTreeSet<SpanRef> = BTreeSet::new();
    unseen.extend(index.linked_by.keys().filter(|id| outside_batches(id)));
    unseen.extend(
        index
            .linked_by_orphan_links
            .keys()
            .filter(|id| outside_batches(id)),
    );
    for span in index.spans {
        if span.kind != Kind::Producer {
            continue;
        }
        let under_batch = span.parent().is_some_and(|p| index.is_batch(&p));
        if under_batch {
            // a dead-letter send names the request it carries
            unseen.extend(span.links.iter().filter(|id| outside_batches(id)));
            continue;
        }
        let is_reply = !index.batch_traces.contains(&span.id.trace_id)
            && span
                .destination
                .as_deref()
                .is_some_and(|d| !request_destinations.contains(d))
            && span
                .links
                .iter()
                .any(|l| index.batch_traces.contains(&l.trace_id));
        if let Some(parent) = span.parent().filter(|p| is_reply && outside_batches(p)) {
            unseen.insert(parent);
        }
    }
    unseen.into_iter().collect()
}

/// What one journey's rebuild looks at.
struct Rebuild<'i, 's> {
    index: &'i Index<'s>,
    spans_dropped: bool,
}

/// A journey before its steps: what was found below the request.
struct Found<'s> {
    request: SpanRef,
    destination: String,
    linking_batches: Vec<&'s SpanRecord>,
    reply: Option<&'s SpanRecord>,
}

impl<'s> Found<'s> {
    fn journey(&self, outcome: Outcome, batch: Option<SpanRef>, deliveries: usize) -> Journey {
        Journey {
            request: self.request,
            request_read: false,
            destination: self.destination.clone(),
            outcome,
            batch,
            deliveries,
            steps: Vec::new(),
            phases: Vec::new(),
        }
    }

    /// The batch the reply links to, if it is a batch span that was read.
    fn reply_batch(&self, index: &Index<'s>) -> Option<SpanRef> {
        let reply = self.reply?;
        reply.links.iter().copied().find(|l| index.is_batch(l))
    }
}

impl<'i, 's> Rebuild<'i, 's> {
    fn find(&self, request: SpanRef, destination: Option<&str>) -> Found<'s> {
        let index = self.index;
        let linking_batches = index.linking_batches(request);
        // The reply: a PRODUCER span below the request in its trace, to another destination;
        // the first one that links to a batch (a redelivered request has several).
        let mut replies: Vec<&SpanRecord> = index
            .descendants(request)
            .into_iter()
            .filter(|s| s.kind == Kind::Producer && s.destination.as_deref() != destination)
            .collect();
        replies.sort_by_key(|s| (s.end_ns, s.id));
        let reply = replies
            .iter()
            .find(|r| r.links.iter().any(|l| index.is_batch(l)))
            .or(replies.first())
            .copied();
        let destination = destination
            .or_else(|| {
                linking_batches
                    .first()
                    .and_then(|b| b.destination.as_deref())
            })
            .or_else(|| {
                let link_span = index.linked_by_orphan_links.get(&request)?;
                index.spans[*link_span].destination.as_deref()
            })
            .unwrap_or_default()
            .to_owned();
        Found {
            request,
            destination,
            linking_batches,
            reply,
        }
    }

    /// The journey of a request whose send span was not read.
    fn unseen_journey(&self, request: SpanRef) -> (u64, Journey) {
        let index = self.index;
        let found = self.find(request, None);
        let batch = found
            .reply_batch(index)
            .filter(|id| found.linking_batches.iter().any(|b| b.id == *id))
            .or_else(|| found.linking_batches.first().map(|b| b.id));
        let dead_letter = index.dead_letter(request);
        let outcome = if dead_letter.is_some() {
            Outcome::DeadLettered
        } else {
            Outcome::Incomplete(Gap::StartMissing)
        };
        let batch = batch.or_else(|| dead_letter?.parent().filter(|p| index.is_batch(p)));
        let batch_destination = batch
            .and_then(|b| index.get(b))
            .and_then(|b| b.destination.as_deref());
        let destination = match found.destination.as_str() {
            "" => batch_destination.unwrap_or_default().to_owned(),
            known => known.to_owned(),
        };
        // Sorted among the others by when its batch (or reply) started.
        let seen_at = batch
            .and_then(|b| index.get(b))
            .or(found.reply)
            .map_or(0, |s| s.start_ns);
        let deliveries = found
            .linking_batches
            .len()
            .max(usize::from(batch.is_some()));
        let mut journey = found.journey(outcome, batch, deliveries);
        journey.destination = destination;
        (seen_at, journey)
    }

    /// The journey of a request whose send span was read.
    fn journey(&self, request: &'s SpanRecord) -> Journey {
        let index = self.index;
        let found = self.find(request.id, request.destination.as_deref());
        let deliveries = found.linking_batches.len();
        let cut = |outcome: Outcome| {
            let mut journey = found.journey(outcome, None, deliveries);
            journey.request_read = true;
            journey
        };

        let Some(reply) = found.reply else {
            if let Some(dead_letter) = index.dead_letter(request.id) {
                let batch = dead_letter.parent().filter(|p| index.is_batch(p));
                let mut journey = found.journey(Outcome::DeadLettered, batch, deliveries.max(1));
                journey.request_read = true;
                return journey;
            }
            return cut(self.without_reply(request.id, &found));
        };

        // The batch: the one the reply links to, if it also links the request; else the first
        // that links the request.
        let linking = &found.linking_batches;
        let batch = match found.reply_batch(index) {
            Some(id) if linking.iter().any(|b| b.id == id) => index.get(id),
            Some(id) if linking.is_empty() => {
                let unlinked_batch = index.get(id);
                return cut(
                    if unlinked_batch.is_some_and(|b| index.link_spans_missing(b)) {
                        Outcome::Incomplete(Gap::SpanMissing)
                    } else {
                        Outcome::Broken(BrokenReason::MissingLink)
                    },
                );
            }
            None if linking.is_empty() => {
                return cut(if reply.links.is_empty() {
                    Outcome::Broken(BrokenReason::MissingLink)
                } else {
                    Outcome::Incomplete(Gap::BatchNotExported)
                });
            }
            _ => linking.first().copied(),
        };
        let Some(batch) = batch else {
            return cut(Outcome::Incomplete(Gap::BatchNotExported));
        };
        complete_journey(index, request, &found, reply, batch)
    }

    /// The outcome of a request with no reply and no dead letter in its trace.
    fn without_reply(&self, request: SpanRef, found: &Found<'_>) -> Outcome {
        let taken = !found.linking_batches.is_empty()
            || self.index.linked_by_orphan_links.contains_key(&request);
        if self.index.went_on_past_a_missing_span(request) {
            Outcome::Incomplete(Gap::SpanMissing)
        } else if self.spans_dropped {
            Outcome::Incomplete(Gap::TelemetryDropped)
        } else if taken {
            Outcome::Broken(BrokenReason::NoReply)
        } else {
            Outcome::Broken(BrokenReason::ContextLost)
        }
    }
}

/// A journey from send to reply: its steps and the model's phases.
fn complete_journey(
    index: &Index<'_>,
    request: &SpanRecord,
    found: &Found<'_>,
    reply: &SpanRecord,
    batch: &SpanRecord,
) -> Journey {
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
    // A send span ends with the broker's delivery report, which can come after the caller
    // already had the reply: the journey ends at the delivery, so the send stage does too
    // (else the stages would add up to more than the end-to-end latency).
    let reply_end = reply_consumer.map_or(reply.end_ns, |c| reply.end_ns.min(c.end_ns));
    timeline.push(Stage::ReplySend, reply.start_ns, reply_end, Some(reply.id));
    if let Some(consumer) = reply_consumer {
        timeline.push(
            Stage::ReplyDelivery,
            reply_end,
            consumer.end_ns,
            Some(consumer.id),
        );
    }

    Journey {
        request: request.id,
        request_read: true,
        destination: found.destination.clone(),
        outcome: Outcome::Complete,
        batch: Some(batch.id),
        deliveries: found.linking_batches.len(),
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
            batch_link_spans: None,
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
    fn a_reply_delivered_before_its_delivery_report_ends_the_journey_at_delivery() {
        let mut spans = scenario();
        for span in &mut spans {
            match &*span.name {
                // The caller consumed the reply (47..48) before the producer's delivery
                // report ended the send span (49).
                "send replies" => span.end_ns = 49_000_000,
                "process replies" => span.end_ns = 48_000_000,
                _ => {}
            }
        }
        let journey = &journeys(spans).journeys[0];
        let sum: f64 = journey.steps.iter().map(Step::ms).sum();
        assert_eq!(journey.total_ms(), 48.0);
        assert_eq!(sum, 48.0, "{:?}", journey.steps);
        assert_eq!(journey.stage_ms(Stage::ReplySend), 8.0);
        assert_eq!(journey.stage_ms(Stage::ReplyDelivery), 0.0);
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
        lost[8].id.trace_id = 5; // the caller's process follows the reply into its new trace
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
            Outcome::Incomplete(Gap::BatchNotExported)
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
    fn dropped() -> DroppedSpans {
        DroppedSpans {
            by_reason: [("queue_full".to_owned(), 3)].into(),
        }
    }

    fn outcomes(spans: Vec<SpanRecord>, dropped: &DroppedSpans) -> Vec<(SpanRef, bool, Outcome)> {
        let mut set = SpanSet::new();
        set.spans = spans;
        rebuild_with(&set, dropped)
            .journeys
            .into_iter()
            .map(|j| (j.request, j.request_read, j.outcome))
            .collect()
    }

    fn without(mut spans: Vec<SpanRecord>, ids: &[u64]) -> Vec<SpanRecord> {
        spans.retain(|s| !ids.contains(&s.id.span_id));
        spans
    }

    #[test]
    fn a_dropped_reply_send_under_the_callers_process_is_a_missing_span() {
        // the reply send (11) was dropped; the caller's process (12) hangs under it, in the
        // request's trace: the context went on, whatever the counters say
        for dropped in [DroppedSpans::default(), dropped()] {
            let spans = without(scenario(), &[11]);
            assert_eq!(
                outcomes(spans, &dropped),
                [(r(1, 10), true, Outcome::Incomplete(Gap::SpanMissing))]
            );
            // also when the batch span that took it was dropped (another batch shows where
            // requests go)
            let mut spans = without(scenario(), &[11, 90]);
            let mut other = to(
                span(8, 80, 0, "process requests", Kind::Consumer, 10, 19),
                "requests",
            );
            other.batch_message_count = Some(1);
            spans.push(other);
            assert_eq!(
                outcomes(spans, &dropped)[0].2,
                Outcome::Incomplete(Gap::SpanMissing)
            );
        }
    }

    #[test]
    fn the_request_and_its_missing_ancestors_are_no_evidence() {
        // the caller's root above the send was dropped: the send itself is an orphan, which
        // says nothing about what came after it
        let mut spans = without(scenario(), &[11, 12]);
        spans[0].parent_span_id = 0x77;
        spans[1].links.clear();
        assert_eq!(
            outcomes(spans.clone(), &DroppedSpans::default())[0].2,
            Outcome::Broken(BrokenReason::ContextLost)
        );
        assert_eq!(
            outcomes(spans, &dropped())[0].2,
            Outcome::Incomplete(Gap::TelemetryDropped)
        );
    }

    #[test]
    fn with_spans_dropped_an_absent_reply_or_batch_is_no_break() {
        // batch links the request, no reply and nothing below the request
        let no_reply = without(scenario(), &[11, 12]);
        assert_eq!(
            outcomes(no_reply.clone(), &DroppedSpans::default())[0].2,
            Outcome::Broken(BrokenReason::NoReply)
        );
        assert_eq!(
            outcomes(no_reply, &dropped())[0].2,
            Outcome::Incomplete(Gap::TelemetryDropped)
        );
        // nothing links the request and nothing is below it
        let mut nothing = without(scenario(), &[11, 12]);
        nothing[1].links.clear();
        assert_eq!(
            outcomes(nothing.clone(), &DroppedSpans::default())[0].2,
            Outcome::Broken(BrokenReason::ContextLost)
        );
        assert_eq!(
            outcomes(nothing, &dropped())[0].2,
            Outcome::Incomplete(Gap::TelemetryDropped)
        );
    }

    #[test]
    fn a_dropped_batch_links_child_is_a_missing_span_not_a_missing_link() {
        // the batch says it had one batch.links child, which held the request's link and
        // was not read; the reply links the batch
        let mut spans = scenario();
        spans[1].links.clear();
        spans[1].batch_link_spans = Some(1);
        assert_eq!(
            outcomes(spans.clone(), &DroppedSpans::default())[0].2,
            Outcome::Incomplete(Gap::SpanMissing)
        );
        // with the child read (holding other links), the request's link is really missing
        let mut overflow = span(9, 97, 90, "batch.links", Kind::Internal, 20, 20);
        overflow.links.push(r(2, 20));
        spans.push(overflow);
        assert_eq!(
            outcomes(spans, &dropped())[0].2,
            Outcome::Broken(BrokenReason::MissingLink)
        );
    }

    #[test]
    fn a_reply_in_the_requests_trace_that_links_nothing_is_a_missing_link() {
        let mut spans = scenario();
        spans[1].links.clear();
        spans[7].links.clear();
        assert_eq!(
            outcomes(spans, &dropped())[0].2,
            Outcome::Broken(BrokenReason::MissingLink)
        );
    }

    #[test]
    fn a_request_whose_send_was_dropped_is_counted_from_downstream() {
        // seen through the batch's link and the reply's parent: one journey, not two
        let rebuilt = journeys(without(scenario(), &[10]));
        assert_eq!(rebuilt.journeys.len(), 1);
        let journey = &rebuilt.journeys[0];
        assert_eq!(journey.request, r(1, 10));
        assert!(!journey.request_read);
        assert_eq!(journey.outcome, Outcome::Incomplete(Gap::StartMissing));
        assert_eq!(journey.batch, Some(r(9, 90)));
        assert_eq!(journey.destination, "requests");
        // only through the batch's link
        assert_eq!(
            outcomes(without(scenario(), &[10, 11, 12]), &dropped()),
            [(r(1, 10), false, Outcome::Incomplete(Gap::StartMissing))]
        );
        // only through the reply, which links the batch (the batch's link dropped with a
        // batch.links child)
        let mut spans = without(scenario(), &[10]);
        spans[0].links.clear();
        assert_eq!(
            outcomes(spans, &dropped()),
            [(r(1, 10), false, Outcome::Incomplete(Gap::StartMissing))]
        );
        // through a batch.links span whose batch span was dropped too
        let mut overflow = span(9, 97, 90, "batch.links", Kind::Internal, 20, 20);
        overflow.links.push(r(1, 10));
        let mut spans = without(scenario(), &[10, 11, 12, 90]);
        spans.push(to(overflow, "requests"));
        let rebuilt = journeys(spans);
        assert_eq!(rebuilt.journeys.len(), 1);
        assert_eq!(rebuilt.journeys[0].destination, "requests");
    }

    #[test]
    fn a_dead_lettered_request_whose_send_was_dropped_is_still_dead_lettered() {
        let mut spans = without(scenario(), &[10, 11, 12]);
        spans[0].links.clear();
        let mut dead_letter = to(
            span(9, 96, 90, "send requests.dlq", Kind::Producer, 37, 38),
            "requests.dlq",
        );
        dead_letter.links.push(r(1, 10));
        spans.push(dead_letter);
        assert_eq!(
            outcomes(spans, &dropped()),
            [(r(1, 10), false, Outcome::DeadLettered)]
        );
    }

    #[test]
    fn a_reply_consumer_is_no_request_and_a_batch_trace_holds_none() {
        // the caller's process links the reply's context: that link names no request
        let mut spans = scenario();
        spans[8].links.push(r(1, 11));
        let rebuilt = journeys(spans);
        assert_eq!(rebuilt.journeys.len(), 1);
        assert_eq!(rebuilt.journeys[0].outcome, Outcome::Complete);
    }
}
