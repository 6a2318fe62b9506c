//! `/ui`: sagas by state, rates, in-flight work, the outbox, dead letters
//! waiting per channel, and the last hour's endings as a chart. The live
//! part is re-fetched every 2 s (`/ui/overview/live`, swapped in by htmx).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use maud::{html, Markup};

use super::chart::{self, Minute};
use super::page::{self, UiError};
use crate::api::counts::{Shared, COUNTS_TTL, COUNT_TIMEOUT};
use crate::api::summary::SagaCounts;
use crate::api::AppState;
use crate::saga::SagaState;
use crate::store::operator::EndedInMinute;
use crate::store::{SagaStore, StoreError};

/// How often the page asks for fresh numbers.
const REFRESH: &str = "every 2s";

/// How stale the chart may be: counting an hour of endings is heavier
/// than the other numbers, and a bar per minute hardly moves in 10 s.
const CHART_TTL: Duration = Duration::from_secs(10);

/// The console's heavier reads, shared by every browser polling the
/// overview (see [`Shared`]): however many tabs are open, each runs at
/// most once per lifetime.
#[derive(Debug)]
pub struct ConsoleCache {
    ended: Shared<Vec<EndedInMinute>>,
    depths: Shared<Vec<(String, i64)>>,
}

impl Default for ConsoleCache {
    fn default() -> Self {
        Self {
            ended: Shared::new(CHART_TTL, COUNT_TIMEOUT),
            depths: Shared::new(COUNTS_TTL, COUNT_TIMEOUT),
        }
    }
}

impl ConsoleCache {
    /// The last hour's endings, by minute and state; `None` (and a
    /// warning) when they cannot be counted now.
    async fn ended(&self, store: &dyn SagaStore) -> Option<Vec<EndedInMinute>> {
        let since = Utc::now() - chrono::Duration::minutes(chart::MINUTES as i64);
        let read = self
            .ended
            .get("counting ended sagas", store.ended_per_minute(since));
        unavailable_as_none(read.await)
    }

    /// Pending dead letters per channel; `None` as for [`Self::ended`].
    async fn depths(&self, store: &dyn SagaStore) -> Option<Vec<(String, i64)>> {
        let read = self
            .depths
            .get("counting dead letters", store.dead_letter_depths());
        unavailable_as_none(read.await)
    }
}

/// A panel that cannot be filled is shown as unavailable; the rest of the
/// overview still is.
fn unavailable_as_none<T>(read: Result<T, StoreError>) -> Option<T> {
    read.map_err(|e| tracing::warn!(error = %e, "a console overview panel is unavailable"))
        .ok()
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
    let depths = state.console.depths(store.as_ref()).await;
    let ended = state.console.ended(store.as_ref()).await;
    let stats = state.orchestrator.stats().snapshot();
    let now = Utc::now();
    Ok(html! {
        div #live hx-get="/ui/overview/live" hx-trigger=(REFRESH) hx-swap="outerHTML" {
            (saga_cards(&sagas))
            section.row {
                (instance_panel(&stats))
                div.panel {
                    h2 { "Outbox" }
                    dl {
                        dt { "waiting to publish" } dd #outbox-backlog { (counts.outbox_backlog) }
                        dt { "parked for a person" } dd #outbox-parked { (counts.outbox_parked) }
                    }
                }
                (depths_panel(depths.as_deref()))
            }
            section.panel {
                h2 { "Ended per minute, last hour" }
                @match &ended {
                    Some(ended) => (chart::render(&Minute::series(ended, now))),
                    None => (unavailable("chart-unavailable")),
                }
            }
            p.hint #updated { "Updated " (page::time(now)) }
        }
    })
}

/// What a panel shows instead when [`unavailable_as_none`] had nothing.
fn unavailable(id: &str) -> Markup {
    html! {
        p.error id=(id) { "Not available now: the store could not be read (the service log says why)." }
    }
}

/// A card per state, each a link to its sagas, and the total.
fn saga_cards(sagas: &SagaCounts) -> Markup {
    html! {
        section.cards #saga-counts {
            @for (state, n) in state_counts(sagas) {
                a.card href={ "/ui/sagas?state=" (state.as_str()) } {
                    span.label { (state.as_str()) }
                    span.count #{ "count-" (state.as_str()) } { (n) }
                }
            }
            div.card { span.label { "total" } span.count #count-total { (sagas.total) } }
        }
    }
}

fn instance_panel(stats: &crate::stats::Snapshot) -> Markup {
    html! {
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
    }
}

fn depths_panel(depths: Option<&[(String, i64)]>) -> Markup {
    html! {
        div.panel #dead-letter-depths {
            h2 { "Dead letters waiting" }
            @if let Some(depths) = depths {
                @if depths.is_empty() {
                    p { "None." }
                } @else {
                    table {
                        @for (channel, n) in depths {
                            tr {
                                td { a href=(page::channel_href(channel)) { (channel) } }
                                td.num data-channel=(channel) { (n) }
                            }
                        }
                    }
                }
            } @else {
                (unavailable("depths-unavailable"))
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_the_store_could_not_fill_says_so_and_an_empty_one_says_none() {
        let unavailable = depths_panel(None).into_string();
        assert!(unavailable.contains("depths-unavailable"), "{unavailable}");
        let none = depths_panel(Some(&[])).into_string();
        assert!(
            none.contains("None.") && !none.contains("unavailable"),
            "{none}"
        );
        let one = depths_panel(Some(&[("a-dlq".into(), 3)])).into_string();
        assert!(one.contains(r#"data-channel="a-dlq">3<"#), "{one}");
    }
}
