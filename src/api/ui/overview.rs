//! `/ui`: sagas by state, rates, in-flight work, the outbox, dead letters
//! waiting per channel, and the last hour's endings as a chart. The live
//! part is re-fetched every 2 s (`/ui/overview/live`, swapped in by htmx).

use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use maud::{html, Markup};
use tokio::sync::Mutex;

use super::chart::{self, Minute};
use super::page::{self, UiError};
use crate::api::summary::SagaCounts;
use crate::api::AppState;
use crate::saga::SagaState;
use crate::store::operator::EndedInMinute;
use crate::store::SagaStore;

/// How often the page asks for fresh numbers.
const REFRESH: &str = "every 2s";

/// How stale the chart may be: counting an hour of endings is heavier
/// than the other numbers, and a bar per minute hardly moves in 10 s.
const CHART_TTL: Duration = Duration::from_secs(10);

/// The last hour's endings, shared by every browser polling the overview.
#[derive(Debug, Default)]
pub struct ChartCache {
    latest: Mutex<Option<(Instant, Vec<EndedInMinute>)>>,
}

impl ChartCache {
    async fn get(&self, store: &dyn SagaStore) -> Result<Vec<EndedInMinute>, UiError> {
        let mut latest = self.latest.lock().await;
        if let Some((at, rows)) = latest.as_ref() {
            if at.elapsed() < CHART_TTL {
                return Ok(rows.clone());
            }
        }
        let since = Utc::now() - chrono::Duration::minutes(chart::MINUTES as i64);
        let rows = store.ended_per_minute(since).await?;
        *latest = Some((Instant::now(), rows.clone()));
        Ok(rows)
    }
}

/// `GET /ui`.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<page::NoticeQuery>,
) -> Result<Response, UiError> {
    let session = page::session_of(&state, &headers);
    let body = html! {
        (page::notice(Some(q.notice.as_str())))
        h1 { "Overview" }
        (live_part(&state).await?)
    };
    Ok(page::ok("Overview", session.as_ref(), body))
}

/// `GET /ui/overview/live`: the live part alone, for the page to swap in.
pub async fn live(State(state): State<AppState>) -> Result<Response, UiError> {
    Ok(page::respond(StatusCode::OK, live_part(&state).await?))
}

async fn live_part(state: &AppState) -> Result<Markup, UiError> {
    let store = state.orchestrator.store();
    let counts = state.counts.get(store.as_ref()).await?;
    let sagas = SagaCounts::from_counts(&counts.by_state);
    let depths = store.dead_letter_depths().await?;
    let ended = state.chart.get(store.as_ref()).await?;
    let stats = state.orchestrator.stats().snapshot();
    let now = Utc::now();
    Ok(html! {
        div #live hx-get="/ui/overview/live" hx-trigger=(REFRESH) hx-swap="outerHTML" {
            section.cards #saga-counts {
                @for (state, n) in state_counts(&sagas) {
                    a.card href={ "/ui/sagas?state=" (state.as_str()) } {
                        span.label { (state.as_str()) }
                        span.count #{ "count-" (state.as_str()) } { (n) }
                    }
                }
                div.card { span.label { "total" } span.count #count-total { (sagas.total) } }
            }
            section.row {
                div.panel {
                    h2 { "This instance" }
                    dl {
                        dt { "instance" } dd { (stats.instance_id) }
                        dt { "in flight" } dd #in-flight { (stats.in_flight) " of " (stats.max_in_flight) }
                        dt { "started / s" } dd { (rate(stats.rates.started)) }
                        dt { "completed / s" } dd { (rate(stats.rates.completed)) }
                        dt { "compensated / s" } dd { (rate(stats.rates.compensated)) }
                        dt { "failed / s" } dd { (rate(stats.rates.failed)) }
                        dt { "dead-lettered / s" } dd { (rate(stats.rates.dead_letters)) }
                    }
                    p.hint { "Rates are this instance's, over the last minute." }
                }
                div.panel {
                    h2 { "Outbox" }
                    dl {
                        dt { "waiting to publish" } dd #outbox-backlog { (counts.outbox_backlog) }
                        dt { "parked for a person" } dd #outbox-parked { (counts.outbox_parked) }
                    }
                }
                div.panel #dead-letter-depths {
                    h2 { "Dead letters waiting" }
                    @if depths.is_empty() {
                        p { "None." }
                    } @else {
                        table {
                            @for (channel, n) in &depths {
                                tr {
                                    td { a href={ "/ui/dead-letters?" (query_pair("channel", channel)) } { (channel) } }
                                    td.num data-channel=(channel) { (n) }
                                }
                            }
                        }
                    }
                }
            }
            section.panel {
                h2 { "Ended per minute, last hour" }
                (chart::render(&Minute::series(&ended, now)))
            }
            p.hint #updated { "Updated " (page::time(now)) }
        }
    })
}

fn query_pair(key: &str, value: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair(key, value)
        .finish()
}

fn rate(per_sec: f64) -> String {
    format!("{per_sec:.2}")
}

fn state_counts(c: &SagaCounts) -> [(SagaState, i64); 7] {
    [
        (SagaState::Started, c.started),
        (SagaState::CreatingAlliance, c.creating_alliance),
        (SagaState::AwaitingAlliance, c.awaiting_alliance),
        (SagaState::Compensating, c.compensating),
        (SagaState::Completed, c.completed),
        (SagaState::Compensated, c.compensated),
        (SagaState::Failed, c.failed),
    ]
}
