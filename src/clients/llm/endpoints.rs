//! The model client's endpoints (`[[llm.endpoints]]`, `[[llm.fallbacks]]`):
//! a view of the client pinned to one endpoint, the view a prompt is sized
//! for on a tier, the fallback tiers, and each endpoint's slots learned
//! from llama.cpp's `GET /props`.

use std::time::Duration;

use super::window::ModelKnowledge;
use super::LlmClient;
use crate::clients::CallError;
use crate::config::Secret;
use crate::resilience::Endpoint;

impl LlmClient {
    /// This client pinned to endpoint `index`: its calls and probes go
    /// there only, and what it reads or learns is that endpoint's model.
    pub fn endpoint_view(&self, index: usize) -> Self {
        let Some(endpoint) = self.endpoints.get(index) else {
            return self.clone();
        };
        Self {
            service: self.service.on_endpoint(index),
            model: endpoint.model.clone(),
            knowledge: endpoint.knowledge.clone(),
            pinned: Some(index),
            ..self.clone()
        }
    }

    /// How many endpoints (primaries and fallbacks) the client has.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The API key of the endpoint this client is pinned to (the first
    /// when it is not pinned), for requests outside the call stack.
    pub(super) fn api_key(&self) -> Option<&Secret> {
        self.endpoints
            .get(self.pinned.unwrap_or(0))
            .and_then(|endpoint| endpoint.api_key.as_ref())
    }

    /// Endpoint `index`'s name (`name`, else its base URL's host:port).
    pub fn endpoint_name(&self, index: usize) -> String {
        self.endpoints
            .get(index)
            .map_or_else(String::new, |endpoint| endpoint.name.clone())
    }

    /// The view a prompt is sized for on the endpoints of `tier`: among
    /// those that can serve now (all of them when none can), the one with
    /// the smallest known window, else the densest known token ratio; `None`
    /// when the tier has no endpoint.
    pub fn sizing_view(&self, tier: u32) -> Option<Self> {
        let members: Vec<&Endpoint> = self
            .service
            .endpoints()
            .iter()
            .filter(|endpoint| endpoint.tier() == tier)
            .collect();
        let serving: Vec<&Endpoint> = members
            .iter()
            .copied()
            .filter(|endpoint| endpoint.can_serve())
            .collect();
        let pool = if serving.is_empty() { members } else { serving };
        pool.into_iter()
            .map(|endpoint| self.endpoint_view(endpoint.index()))
            .min_by(|a, b| {
                let (a, b) = (a.lock().clone(), b.lock().clone());
                let window = |knowledge: &ModelKnowledge| knowledge.window().unwrap_or(u32::MAX);
                window(&a)
                    .cmp(&window(&b))
                    .then(a.chars_per_token().total_cmp(&b.chars_per_token()))
            })
    }

    /// The fallback tiers, in order.
    pub fn fallback_tiers(&self) -> Vec<u32> {
        let mut tiers: Vec<u32> = self
            .service
            .endpoints()
            .iter()
            .map(Endpoint::tier)
            .filter(|tier| *tier > 0)
            .collect();
        tiers.dedup();
        tiers
    }

    /// Asks each endpoint whose size the config left to its server how
    /// many slots it has (llama.cpp's `GET /props` `total_slots`, at the
    /// server's root) and sizes its bulkhead to them. A server that answers
    /// without saying keeps the policy's `max_concurrent`; one that does not
    /// answer is asked again next time.
    pub async fn learn_slots(&self) {
        for endpoint in self.service.endpoints() {
            if endpoint.capacity_settled() {
                continue;
            }
            let view = self.service.on_endpoint(endpoint.index());
            let root = props_url(endpoint.base_url());
            let props: Result<serde_json::Value, CallError> =
                view.probe_url_json(&root, SLOTS_PROBE_TIMEOUT).await;
            let slots = match props {
                Ok(props) => props["total_slots"]
                    .as_u64()
                    .and_then(|slots| u32::try_from(slots).ok()),
                // It answered without slots (a 404 from a server that is not
                // llama.cpp): not asked again.
                Err(CallError::Status { .. }) => None,
                Err(_) => continue,
            };
            self.service
                .guard()
                .learn_endpoint_slots(endpoint.index(), slots);
        }
    }
}

/// A `/props` answer is waited for this long: it is read before a
/// session's first turn.
const SLOTS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where llama.cpp answers `GET /props`: the server's root, not `/v1`.
fn props_url(base_url: &str) -> String {
    let root = base_url.trim_end_matches('/');
    let root = root.strip_suffix("/v1").unwrap_or(root);
    format!("{root}/props")
}
