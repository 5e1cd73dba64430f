//! What the config prints of itself loads back as the same config, and a
//! file made from `config defaults` can be extended by appending tables.

use super::*;

#[test]
fn the_printed_defaults_load_back_as_the_defaults() {
    let file = write(&Config::builtin().redacted_toml());
    let loaded = load(Some(file.path()), Vec::new()).expect("the defaults are valid");
    assert_eq!(loaded.redacted_toml(), Config::builtin().redacted_toml());
}

#[test]
fn the_printed_defaults_take_an_appended_schedule() {
    let printed = Config::builtin().redacted_toml();
    // An empty list of tables written as `schedule = []` would make an
    // appended `[[schedule]]` a second definition of the key.
    assert!(
        !printed.lines().any(|line| line.starts_with("schedule")),
        "{printed}"
    );
    let appended = format!(
        "{printed}\n[[schedule]]\nname = \"nightly\"\ncron = \"0 2 * * *\"\ntimezone = \"Europe/London\"\nturns = 6\n"
    );
    let file = write(&appended);
    let loaded = load(Some(file.path()), Vec::new()).expect("the appended schedule loads");
    assert_eq!(loaded.schedule.len(), 1);
    let schedule = &loaded.schedule[0];
    assert_eq!(schedule.name, "nightly");
    assert_eq!(schedule.turns, 6);
    assert_eq!(
        schedule.trigger().describe(),
        "cron \"0 2 * * *\" Europe/London"
    );
    // Everything but the schedule is still the defaults.
    let mut without_schedule = loaded.clone();
    without_schedule.schedule.clear();
    assert_eq!(
        without_schedule.redacted_toml(),
        Config::builtin().redacted_toml()
    );
    // And the config with its schedule prints and loads back as itself.
    let again = write(&loaded.redacted_toml());
    let reloaded = load(Some(again.path()), Vec::new()).expect("loads back");
    assert_eq!(reloaded.schedule, loaded.schedule);
    assert_eq!(reloaded.redacted_toml(), loaded.redacted_toml());
}

#[test]
fn the_printed_defaults_take_appended_oauth_clients() {
    let appended = format!(
        "{}\n[[oauth.clients]]\nclient_id = \"solo\"\nclient_secret_env = \"SOLO_SECRET\"\nscopes = [\"calculator:use\"]\n",
        Config::builtin().redacted_toml()
    );
    let file = write(&appended);
    let environment = vec![("SOLO_SECRET".to_string(), "a long secret".to_string())];
    let loaded = load(Some(file.path()), environment).expect("the appended client loads");
    assert_eq!(loaded.client_secret("solo"), Some("a long secret"));
    assert_eq!(loaded.oauth.clients.len(), 1);
}
