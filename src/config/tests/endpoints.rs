//! Several endpoints per service: the lists load, the shorthand beside a
//! list is refused naming both keys, memory and OAuth keep one endpoint,
//! and each endpoint's key is read like `llm.api_key`.

use super::*;

fn refused(contents: &str) -> String {
    let file = write(contents);
    load(Some(file.path()), Vec::new())
        .expect_err(contents)
        .to_string()
}

#[test]
fn model_endpoints_and_fallbacks_load_with_their_defaults() {
    let file = write(
        "[[llm.endpoints]]\nbase_url = \"http://10.0.0.1:8080/v1\"\nmodel = \"qwen\"\n\
         [[llm.endpoints]]\nname = \"b\"\nbase_url = \"http://10.0.0.2:8080/v1\"\nmodel = \"qwen\"\nweight = 3\nmax_concurrent = 2\n\
         [[llm.fallbacks]]\nbase_url = \"http://10.0.0.9/v1\"\nmodel = \"big\"\n\
         [llm.outlier]\nconsecutive_failures = 3\n",
    );
    let config = load(Some(file.path()), Vec::new()).expect("loads");
    let primaries = config.llm.primary_endpoints();
    assert_eq!(primaries.len(), 2);
    assert_eq!(primaries[0].label(), "10.0.0.1:8080");
    assert_eq!((primaries[0].weight, primaries[0].max_concurrent), (1, 0));
    assert_eq!(
        (primaries[1].label(), primaries[1].weight),
        ("b".to_string(), 3)
    );
    assert_eq!(config.llm.fallbacks[0].label(), "10.0.0.9:80");
    assert_eq!(config.llm.primary_model(), "qwen");
    assert_eq!(
        config.llm.outlier,
        OutlierConfig {
            consecutive_failures: 3,
            ..OutlierConfig::default()
        }
    );
}

#[test]
fn the_shorthand_is_one_endpoint_named_by_host_and_port() {
    let config = load(None, Vec::new()).expect("defaults");
    let primaries = config.llm.primary_endpoints();
    assert_eq!(primaries.len(), 1);
    assert_eq!(primaries[0].label(), "127.0.0.1:8006");
    assert_eq!(primaries[0].base_url, config.llm.base_url);
    assert_eq!(
        primaries[0].max_concurrent, config.llm.policy.max_concurrent,
        "the shorthand keeps the policy's bulkhead, as before"
    );
}

#[test]
fn base_url_beside_endpoints_names_both_keys() {
    let error = refused(
        "[llm]\nbase_url = \"http://10.0.0.1:8080/v1\"\n\
         [[llm.endpoints]]\nbase_url = \"http://10.0.0.2:8080/v1\"\nmodel = \"qwen\"\n",
    );
    assert!(
        error.contains("llm.base_url") && error.contains("llm.endpoints"),
        "{error}"
    );
    let error = refused(
        "[services.calculator]\nbase_url = \"http://10.0.0.1:9000\"\nendpoints = [\"http://10.0.0.2:9000\"]\n",
    );
    assert!(
        error.contains("services.calculator.base_url")
            && error.contains("services.calculator.endpoints"),
        "{error}"
    );
}

#[test]
fn memory_and_oauth_keep_one_endpoint() {
    for service in ["memory", "oauth"] {
        let error = refused(&format!(
            "[services.{service}]\nendpoints = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\n"
        ));
        assert!(
            error.contains(&format!("services.{service}.endpoints"))
                && error.contains("keeps one endpoint"),
            "{error}"
        );
    }
    let file = write(
        "[services.calculator]\nendpoints = [\"http://127.0.0.1:9001\", \"http://127.0.0.1:9002\"]\n",
    );
    let config = load(Some(file.path()), Vec::new()).expect("a tool may have several");
    assert_eq!(config.services.calculator.endpoint_urls().len(), 2);
}

#[test]
fn bad_endpoint_values_name_their_keys() {
    for (contents, key) in [
        (
            "[[llm.endpoints]]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n",
            "llm.endpoints[0].base_url",
        ),
        (
            "[[llm.endpoints]]\nbase_url = \"http://x\"\nmodel = \"m\"\nweight = 0\n",
            "llm.endpoints[0].weight",
        ),
        (
            "[[llm.endpoints]]\nbase_url = \"http://x\"\nmodel = \"m\"\n[[llm.fallbacks]]\nbase_url = \"http://x\"\nmodel = \"n\"\n",
            "llm.fallbacks[0].name",
        ),
        ("[llm.outlier]\nmax_ejection_percent = 101\n", "llm.outlier.max_ejection_percent"),
        (
            "[services.calculator.outlier]\nbase_ejection_ms = 0\n",
            "services.calculator.outlier.base_ejection_ms",
        ),
        (
            "[services.calculator]\nendpoints = [\"http://a:1\", \"http://a:1/\"]\n",
            "services.calculator.endpoints[1]",
        ),
    ] {
        let error = refused(contents);
        assert!(error.contains(key), "{contents:?}: `{error}` does not name {key}");
    }
}

#[test]
fn each_endpoint_reads_its_own_key_and_none_is_shared() {
    let file = write(
        "[[llm.endpoints]]\nbase_url = \"http://10.0.0.1/v1\"\nmodel = \"m\"\napi_key_env = \"FIRST_KEY\"\n\
         [[llm.endpoints]]\nbase_url = \"http://10.0.0.2/v1\"\nmodel = \"m\"\n",
    );
    let environment = vec![
        ("FIRST_KEY".to_string(), "sk-first".to_string()),
        ("HEISTD_LLM_API_KEY".to_string(), "sk-shared".to_string()),
    ];
    let config = load(Some(file.path()), environment).expect("loads");
    let keys: Vec<Option<&str>> = config
        .llm
        .endpoints
        .iter()
        .map(|endpoint| endpoint.api_key.as_ref().map(Secret::expose))
        .collect();
    assert_eq!(keys, [Some("sk-first"), None]);
}
