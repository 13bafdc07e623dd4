//! A self-contained HTML page (inline SVG and CSS, no script, nothing fetched): a timeline of
//! the slowest requests on one time axis, each stage a coloured bar, requests served by the
//! same batch grouped under one outlined band, and the stage percentile table.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::otlp_json::SpanRef;
use super::rebuild::{Journey, Stage};
use super::report::Report;

/// Rows in the timeline at most.
pub const MAX_ROWS: usize = 40;

const ROW_HEIGHT: f64 = 22.0;
const LABEL_WIDTH: f64 = 250.0;
const PLOT_WIDTH: f64 = 900.0;
const TOP: f64 = 40.0;

fn colour(stage: Stage) -> &'static str {
    match stage {
        Stage::Produce => "#4e79a7",
        Stage::QueueWait => "#bab0ac",
        Stage::BatchWait => "#f28e2b",
        Stage::FeatureFetch => "#59a14f",
        Stage::Preprocess => "#8cd17d",
        Stage::ModelExecute => "#e15759",
        Stage::Postprocess => "#b07aa1",
        Stage::ReplySend => "#76b7b2",
        Stage::ReplyDelivery => "#9c755f",
        Stage::Untraced => "#ffffff",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the report as an HTML page.
pub fn render(report: &Report<'_>, source: &str) -> String {
    let mut rows: Vec<&Journey> = report.slowest.iter().take(MAX_ROWS).copied().collect();
    // Requests of one batch next to each other, batches in time order.
    let batch_start = |j: &Journey| {
        j.steps
            .iter()
            .find(|s| s.stage == Stage::BatchWait)
            .map_or(0, |s| s.start_ns)
    };
    rows.sort_by_key(|j| (batch_start(j), j.batch, j.steps.first().map(|s| s.start_ns)));

    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mqtrace journeys</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
p.meta {{ color: #555; margin: 0 0 16px; }}
p.warn {{ color: #8a4b00; background: #fff4d6; padding: 6px 10px; margin: 0 0 8px; }}
table {{ border-collapse: collapse; margin-top: 16px; }}
th, td {{ padding: 4px 10px; text-align: right; border-bottom: 1px solid #ddd; }}
th:first-child, td:first-child {{ text-align: left; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: middle; border: 1px solid #999; }}
.legend span {{ margin-right: 14px; font-size: 13px; }}
text {{ font-size: 11px; }}
</style></head><body>
<h1>Request journeys</h1>
{telemetry}<p class="meta">{source}: {requests} requests, {complete} complete, {dead} dead-lettered, {broken} broken, {incomplete} incomplete; {batches} batches. End to end p50 {p50:.1} ms, p99 {p99:.1} ms.</p>
"#,
        telemetry = report
            .telemetry_line()
            .map(|line| format!(
                "<p class=\"warn\"><strong>{}</strong>: journeys cut where a span is missing are listed as incomplete, not broken.</p>\n",
                escape(&line)
            ))
            .unwrap_or_default(),
        source = escape(source),
        requests = report.requests(),
        complete = report.complete,
        dead = report.dead_lettered,
        broken = report.broken.len(),
        incomplete = report.incomplete.len(),
        batches = report.journeys.batches,
        p50 = report.end_to_end.p50,
        p99 = report.end_to_end.p99,
    );

    page.push_str("<div class=\"legend\">");
    for stage in Stage::ALL {
        let _ = write!(
            page,
            r#"<span><i class="swatch" style="background:{}"></i>{}</span>"#,
            colour(stage),
            stage.as_str()
        );
    }
    page.push_str("</div>\n");
    page.push_str(&timeline(&rows));
    page.push_str(&stage_table(report));
    if !report.broken.is_empty() {
        page.push_str("<h2>Broken journeys</h2><table><tr><th>reason</th><th>requests</th><th>meaning</th></tr>");
        for (reason, count) in report.broken_by_reason() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{count}</td><td style=\"text-align:left\">{}</td></tr>",
                reason.as_str(),
                escape(reason.explain())
            );
        }
        page.push_str("</table>");
    }
    if !report.incomplete.is_empty() {
        page.push_str("<h2>Incomplete journeys (telemetry missing)</h2><table><tr><th>reason</th><th>requests</th><th>meaning</th></tr>");
        for (gap, count) in report.incomplete_by_reason() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{count}</td><td style=\"text-align:left\">{}</td></tr>",
                gap.as_str(),
                escape(gap.explain())
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>\n");
    page
}

fn timeline(rows: &[&Journey]) -> String {
    let mut svg = String::new();
    let start = rows
        .iter()
        .filter_map(|j| j.steps.first().map(|s| s.start_ns))
        .min()
        .unwrap_or(0);
    let end = rows
        .iter()
        .filter_map(|j| j.steps.last().map(|s| s.end_ns))
        .max()
        .unwrap_or(start + 1)
        .max(start + 1);
    let span_ms = (end - start) as f64 / 1e6;
    let x = |ns: u64| LABEL_WIDTH + (ns.saturating_sub(start) as f64 / 1e6) / span_ms * PLOT_WIDTH;
    let height = TOP + rows.len() as f64 * ROW_HEIGHT + 30.0;
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" role="img" aria-label="timeline of the slowest requests">"#,
        w = LABEL_WIDTH + PLOT_WIDTH + 20.0,
    );
    // time axis
    for tick in 0..=10 {
        let t = span_ms * f64::from(tick) / 10.0;
        let tx = LABEL_WIDTH + PLOT_WIDTH * f64::from(tick) / 10.0;
        let _ = write!(
            svg,
            r##"<line x1="{tx:.1}" y1="{y1}" x2="{tx:.1}" y2="{y2}" stroke="#eee"/><text x="{tx:.1}" y="{ty}" text-anchor="middle" fill="#666">{t:.0} ms</text>"##,
            y1 = TOP - 8.0,
            y2 = height - 24.0,
            ty = TOP - 14.0,
        );
    }
    // batch bands: rows that share a batch, outlined together
    let mut groups: Vec<(SpanRef, usize, usize)> = Vec::new();
    for (row, journey) in rows.iter().enumerate() {
        let Some(batch) = journey.batch else { continue };
        match groups.last_mut() {
            Some((id, _, last)) if *id == batch && *last + 1 == row => *last = row,
            _ => groups.push((batch, row, row)),
        }
    }
    let mut shared: HashMap<SpanRef, usize> = HashMap::new();
    for journey in rows {
        if let Some(batch) = journey.batch {
            *shared.entry(batch).or_default() += 1;
        }
    }
    for (group, (batch, first, last)) in groups.iter().enumerate() {
        if shared.get(batch).copied().unwrap_or(0) < 2 {
            continue;
        }
        let journey = rows[*first];
        let (Some(open), Some(close)) = (
            journey
                .steps
                .iter()
                .find(|s| s.stage == Stage::BatchWait)
                .map(|s| s.start_ns),
            journey
                .steps
                .iter()
                .rev()
                .find(|s| s.stage == Stage::Postprocess || s.stage == Stage::ModelExecute)
                .map(|s| s.end_ns),
        ) else {
            continue;
        };
        let y = TOP + *first as f64 * ROW_HEIGHT - 2.0;
        let h = (*last - *first + 1) as f64 * ROW_HEIGHT;
        // the batch's interval across its rows, and a bracket beside the row labels
        let bracket = if group % 2 == 0 { "#d08b00" } else { "#7a5195" };
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#fff4d6" stroke="{bracket}" stroke-dasharray="4 2"><title>batch {id:016x}: {n} of these requests</title></rect><rect x="{bx:.1}" y="{y:.1}" width="5" height="{h:.1}" fill="{bracket}"><title>batch {id:016x}</title></rect><text x="{tx:.1}" y="{ty:.1}" fill="{bracket}">batch {short:08x} ×{n}</text>"##,
            x = x(open),
            w = (x(close) - x(open)).max(1.5),
            id = batch.span_id,
            short = batch.span_id >> 32,
            n = last - first + 1,
            bx = LABEL_WIDTH - 10.0,
            tx = LABEL_WIDTH - 122.0,
            ty = y + 15.0,
        );
    }
    for (row, journey) in rows.iter().enumerate() {
        let y = TOP + row as f64 * ROW_HEIGHT;
        let _ = write!(
            svg,
            r##"<text x="4" y="{ty:.1}" fill="#333"><title>trace {trace:032x}</title>{short:08x} {total:.1} ms</text>"##,
            ty = y + 13.0,
            trace = journey.request.trace_id,
            short = (journey.request.trace_id >> 96) as u32,
            total = journey.total_ms(),
        );
        for step in &journey.steps {
            let (x0, x1) = (x(step.start_ns), x(step.end_ns));
            let stroke = if step.stage == Stage::Untraced {
                r##" stroke="#999" stroke-dasharray="2 2""##
            } else {
                ""
            };
            let _ = write!(
                svg,
                r#"<rect x="{x0:.2}" y="{y:.1}" width="{w:.2}" height="{h}" fill="{fill}"{stroke}><title>{stage}: {ms:.2} ms</title></rect>"#,
                w = (x1 - x0).max(0.5),
                h = ROW_HEIGHT - 6.0,
                fill = colour(step.stage),
                stage = step.stage.as_str(),
                ms = step.ms(),
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn stage_table(report: &Report<'_>) -> String {
    let mut table = String::from(
        "<h2>Stages (complete journeys)</h2><table><tr><th>stage</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>mean ms</th></tr>",
    );
    for (stage, p) in &report.stages {
        let _ = write!(
            table,
            r#"<tr><td><i class="swatch" style="background:{}"></i>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>"#,
            colour(*stage),
            stage.as_str(),
            p.p50,
            p.p95,
            p.p99,
            p.mean
        );
    }
    let e = &report.end_to_end;
    let _ = write!(
        table,
        "<tr><th>end to end</th><th>{:.2}</th><th>{:.2}</th><th>{:.2}</th><th>{:.2}</th></tr></table>",
        e.p50, e.p95, e.p99, e.mean
    );
    table
}
