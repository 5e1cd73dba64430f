//! The scenario: who the agents are (names, roles, tools, system prompts),
//! the documents the file reader serves, the shift database's SQL, and the
//! rehearsal model's script. The bank scenario under `config/scenarios/bank`
//! is built into the binary so that `heistd demo` needs no files; another
//! directory of the same shape can be named in the config.
//!
//! It only parses and checks scenario files; it must not talk to services or
//! the store.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::wire::{tool_scope, Tool};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario file {path}: {message}")]
    Read { path: String, message: String },
    #[error("scenario {name}: {message}")]
    Invalid { name: String, message: String },
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    pub objective: String,
    pub agents: Vec<Agent>,
    pub rehearsal: Vec<RehearsalLine>,
    /// Document name (`bank_layout.txt`) to its text.
    pub documents: BTreeMap<String, String>,
    /// SQL that builds the shift database the database tool serves.
    pub shifts_sql: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    pub role: String,
    pub tools: Vec<String>,
    pub system_prompt: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RehearsalLine {
    pub agent: String,
    pub tool: String,
    pub text: String,
}

impl Agent {
    /// The OAuth scopes this agent asks for: one per tool it may use.
    pub fn scopes(&self) -> Vec<String> {
        self.tools.iter().map(|tool| tool_scope(tool)).collect()
    }

    pub fn may_use(&self, tool: &str) -> bool {
        self.tools.iter().any(|granted| granted == tool)
    }
}

impl Scenario {
    /// The bank heist shipped in the binary.
    pub fn embedded() -> Self {
        let documents = [
            (
                "bank_layout.txt",
                include_str!("../config/scenarios/bank/documents/bank_layout.txt"),
            ),
            (
                "security_specs.txt",
                include_str!("../config/scenarios/bank/documents/security_specs.txt"),
            ),
            (
                "vault_specs.txt",
                include_str!("../config/scenarios/bank/documents/vault_specs.txt"),
            ),
        ]
        .into_iter()
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect();
        let shifts_sql = include_str!("../config/scenarios/bank/shifts.sql").to_string();
        // The embedded files are checked by a unit test, so this cannot fail
        // in a released binary.
        Self::parse(
            include_str!("../config/scenarios/bank/scenario.toml"),
            documents,
            shifts_sql,
        )
        .expect("the embedded bank scenario is valid")
    }

    /// Loads a scenario directory: `scenario.toml`, `documents/*.txt`, `shifts.sql`.
    pub fn load(directory: &Path) -> Result<Self, ScenarioError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
                path: path.display().to_string(),
                message: error.to_string(),
            })
        };
        let definition = read(&directory.join("scenario.toml"))?;
        let shifts_sql = read(&directory.join("shifts.sql"))?;
        let documents_directory = directory.join("documents");
        let entries =
            std::fs::read_dir(&documents_directory).map_err(|error| ScenarioError::Read {
                path: documents_directory.display().to_string(),
                message: error.to_string(),
            })?;
        let mut documents = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
                    documents.insert(name.to_string(), read(&path)?);
                }
            }
        }
        Self::parse(&definition, documents, shifts_sql).map_err(|error| match error {
            ScenarioError::Invalid { message, .. } => ScenarioError::Read {
                path: directory.join("scenario.toml").display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// The configured scenario, or the embedded one.
    pub fn from_config(directory: Option<&Path>) -> Result<Self, ScenarioError> {
        match directory {
            Some(directory) => Self::load(directory),
            None => Ok(Self::embedded()),
        }
    }

    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|agent| agent.name == name)
    }

    fn parse(
        definition: &str,
        documents: BTreeMap<String, String>,
        shifts_sql: String,
    ) -> Result<Self, ScenarioError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Definition {
            name: String,
            title: String,
            objective: String,
            agents: Vec<Agent>,
            #[serde(default)]
            rehearsal: Vec<RehearsalLine>,
        }
        let definition: Definition =
            toml::from_str(definition).map_err(|error| ScenarioError::Invalid {
                name: "(unparsed)".into(),
                message: error.to_string(),
            })?;
        let scenario = Self {
            name: definition.name,
            title: definition.title,
            objective: definition.objective,
            agents: definition.agents,
            rehearsal: definition.rehearsal,
            documents,
            shifts_sql,
        };
        scenario.check().map_err(|message| ScenarioError::Invalid {
            name: scenario.name.clone(),
            message,
        })?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), String> {
        if self.agents.len() < 2 {
            return Err(
                "needs at least two agents (a turn never goes to the same agent twice)".into(),
            );
        }
        for agent in &self.agents {
            if self
                .agents
                .iter()
                .filter(|other| other.name == agent.name)
                .count()
                > 1
            {
                return Err(format!("agent `{}` is defined twice", agent.name));
            }
            if let Some(tool) = agent.tools.iter().find(|tool| Tool::parse(tool).is_none()) {
                return Err(format!("agent `{}` has unknown tool `{tool}`", agent.name));
            }
        }
        for line in &self.rehearsal {
            let Some(agent) = self.agent(&line.agent) else {
                return Err(format!("rehearsal line for unknown agent `{}`", line.agent));
            };
            if !agent.may_use(&line.tool) {
                return Err(format!(
                    "rehearsal line for `{}` uses tool `{}` it does not have",
                    line.agent, line.tool
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_scenario_is_complete() {
        let scenario = Scenario::embedded();
        let names: Vec<_> = scenario
            .agents
            .iter()
            .map(|agent| agent.name.as_str())
            .collect();
        assert_eq!(names, ["planner", "hacker", "safecracker", "mole"]);
        for agent in &scenario.agents {
            assert!(
                agent
                    .system_prompt
                    .starts_with(&format!("You are the {}", agent.name)),
                "{}",
                agent.name
            );
            for tool in &agent.tools {
                assert!(
                    scenario
                        .rehearsal
                        .iter()
                        .any(|line| line.agent == agent.name && &line.tool == tool),
                    "no rehearsal line for {} using {tool}",
                    agent.name
                );
            }
        }
        assert_eq!(scenario.documents.len(), 3);
        assert!(scenario.shifts_sql.contains("CREATE TABLE"));
    }

    #[test]
    fn the_repository_copy_loads_like_the_embedded_one() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/bank");
        let loaded = Scenario::load(&directory).expect("loads");
        assert_eq!(loaded.agents.len(), Scenario::embedded().agents.len());
        assert_eq!(loaded.documents, Scenario::embedded().documents);
    }
}
