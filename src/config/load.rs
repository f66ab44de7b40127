//! Loading: TOML text, `EVENTSCOPE_...` overrides, deserialization that collects every failure with its
//! key, then the checks of [`super::validate`] and the values resolved once from several keys.

use super::{Config, ConfigErrors, ConfigIssue, Role, ENV_PREFIX};

impl Config {
    /// Reads a file, applies the process environment and validates it for the given roles (none: for the
    /// roles its sections ask for).
    pub fn load_file(path: &std::path::Path, roles: &[Role]) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigIssue {
                key: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }])
        })?;
        Self::load_str(&text, std::env::vars(), roles)
    }

    /// Parses TOML text, applies the given `EVENTSCOPE_...` variables and validates for `roles`; then
    /// resolves what derives from several keys (TLS settings, the advertised host, the service name).
    pub fn load_str(text: &str, env: impl IntoIterator<Item = (String, String)>, roles: &[Role]) -> Result<Config, ConfigErrors> {
        let mut issues = Vec::new();
        let mut tree: toml::Value = match text.parse::<toml::Table>() {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                let reason = e.message().to_string();
                return Err(ConfigErrors(vec![ConfigIssue {
                    key: "(file)".into(),
                    reason: format!("not valid TOML: {reason}"),
                }]));
            }
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        apply_env(&mut tree, env.iter().cloned(), &mut issues);
        let config = deserialize_collecting(tree, &mut issues);
        if let Some(config) = &config {
            issues.extend(config.validate());
            let roles: Vec<Role> = if roles.is_empty() { config.roles() } else { roles.to_vec() };
            if roles.is_empty() {
                issues.push(ConfigIssue {
                    key: "(file)".into(),
                    reason: "nothing to run: add [[clusters]] (collector) or [sidecar]".into(),
                });
            }
            if roles.contains(&Role::Sidecar) {
                // The OTLP export settings: standard OTEL_* variables, checked with the rest.
                let otel: std::collections::HashMap<String, String> = env.iter().filter(|(k, _)| k.starts_with("OTEL_")).cloned().collect();
                if let Err(problems) = crate::telemetry::traces::ExportSettings::from_env(&otel) {
                    issues.extend(problems.into_iter().map(|(key, reason)| ConfigIssue { key, reason }));
                }
            }
            for role in roles {
                issues.extend(config.validate_role(role));
            }
        }
        match config {
            Some(mut c) if issues.is_empty() => {
                c.resolve(&env);
                Ok(c)
            }
            _ => Err(ConfigErrors(issues)),
        }
    }

    /// Values derived from several keys, resolved once (validation has checked what they are made of).
    fn resolve(&mut self, env: &[(String, String)]) {
        for c in &mut self.clusters {
            c.security = crate::kafka::Security::from_properties(&c.kafka).unwrap_or_default();
        }
        if let Some(sc) = &mut self.sidecar {
            sc.security = crate::kafka::Security::from_properties(&sc.kafka).unwrap_or_default();
            if sc.kafka_advertised_host.is_empty() {
                sc.kafka_advertised_host = default_advertised_host(&sc.kafka_listen);
            }
            if sc.http.service.is_empty() {
                sc.http.service = env
                    .iter()
                    .find(|(k, v)| k == "OTEL_SERVICE_NAME" && !v.trim().is_empty())
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| "unknown_service".to_string());
            }
        }
    }
}

/// The host to advertise for a listen address: itself, or loopback for an unspecified address.
fn default_advertised_host(listen: &std::net::SocketAddr) -> String {
    match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "::1".into(),
        ip => ip.to_string(),
    }
}

/// Deserializes the tree, recording each failure with its path and removing the value that caused it,
/// until it succeeds or no progress is possible. A failed array element is first replaced by an empty
/// table (so later elements keep their index: a cluster with a bad key); if it fails again there (a
/// string that is not a valid regex or route), it is removed, and the keys of later failures in that
/// array are given with their index in the file.
fn deserialize_collecting(mut tree: toml::Value, issues: &mut Vec<ConfigIssue>) -> Option<Config> {
    let mut replaced: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut shifts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for _ in 0..512 {
        match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => return Some(config),
            Err(err) => {
                let path = err.path().to_string();
                if replaced.contains(&path) {
                    // The placeholder failed too: take the element out of its array.
                    let (array, _) = split_index(&path)?;
                    if !remove_element(&mut tree, &path) {
                        return None;
                    }
                    *shifts.entry(array.to_string()).or_default() += 1;
                    replaced.retain(|p| !p.starts_with(&format!("{array}[")));
                    continue;
                }
                // Keep the first line: the path is reported separately.
                let inner = err.into_inner().to_string().lines().next().unwrap_or_default().trim().to_string();
                let (reported, reason) = match unknown_field_name(&inner) {
                    // For an unknown field the path names its parent; point at the field itself.
                    Some(field) if !path.ends_with(&field) => (if path == "." { field.clone() } else { format!("{path}.{field}") }, inner),
                    _ => (path.clone(), inner),
                };
                issues.push(ConfigIssue {
                    key: in_file(&reported, &shifts),
                    reason,
                });
                if split_index(&path).is_some_and(|(_, rest)| rest.is_empty()) {
                    replaced.insert(path.clone());
                }
                if !remove_path(&mut tree, &reported) {
                    return None;
                }
            }
        }
    }
    None
}

/// `a.b[3]` → (`a.b`, ``); `a.b[3].c` → (`a.b`, `.c`): the last array index of a path and what follows.
fn split_index(path: &str) -> Option<(&str, &str)> {
    let open = path.rfind('[')?;
    let close = open + path[open..].find(']')?;
    path[open + 1..close].parse::<usize>().ok()?;
    Some((&path[..open], &path[close + 1..]))
}

/// A path as the file numbers its last array's elements (some before it may have been removed).
fn in_file(path: &str, shifts: &std::collections::HashMap<String, usize>) -> String {
    let Some((array, rest)) = split_index(path) else {
        return path.to_string();
    };
    let Some(shift) = shifts.get(array) else {
        return path.to_string();
    };
    let open = array.len();
    let index: usize = path[open + 1..].split(']').next().and_then(|i| i.parse().ok()).unwrap_or(0);
    format!("{array}[{}]{rest}", index + shift)
}

/// Removes an array element (the elements after it move up).
fn remove_element(tree: &mut toml::Value, path: &str) -> bool {
    let segments = parse_path(path);
    let Some((Seg::Index(i), parents)) = segments.split_last() else {
        return false;
    };
    let Some(toml::Value::Array(a)) = walk(tree, parents) else {
        return false;
    };
    if *i < a.len() {
        a.remove(*i);
        true
    } else {
        false
    }
}

fn walk<'t>(tree: &'t mut toml::Value, segments: &[Seg]) -> Option<&'t mut toml::Value> {
    let mut node = tree;
    for seg in segments {
        node = match (seg, node) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Removes the value at a serde_path_to_error path (`a.b[2].c`). Returns false if nothing was removed.
fn remove_path(tree: &mut toml::Value, path: &str) -> bool {
    let segments = parse_path(path);
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    match (last, walk(tree, parents)) {
        (Seg::Key(k), Some(toml::Value::Table(t))) => t.remove(k).is_some(),
        (Seg::Index(i), Some(toml::Value::Array(a))) if *i < a.len() => {
            // Keep indexes stable for the messages that follow: replace by an empty table.
            a[*i] = toml::Value::Table(Default::default());
            true
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(bracket) = rest.find('[') {
            if bracket > 0 {
                out.push(Seg::Key(rest[..bracket].to_string()));
            }
            rest = &rest[bracket..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// Applies `EVENTSCOPE_A__B__0__C=value` overrides onto the tree.
fn apply_env(tree: &mut toml::Value, env: impl IntoIterator<Item = (String, String)>, issues: &mut Vec<ConfigIssue>) {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        // Variables of the command line (EVENTSCOPE_CONFIG...) have a single segment and no table.
        if path.len() < 2 || path.iter().any(|s| s.is_empty()) {
            continue;
        }
        if let Err(reason) = set_path(tree, &path, &value) {
            issues.push(ConfigIssue { key: name.clone(), reason });
        }
    }
}

fn set_path(tree: &mut toml::Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut node = tree;
    let mut in_kafka = false;
    for (depth, seg) in path.iter().enumerate() {
        let last = depth == path.len() - 1;
        let key = if in_kafka { seg.replace('_', ".") } else { seg.clone() };
        node = match node {
            toml::Value::Table(t) => {
                if last {
                    t.insert(key, env_value(raw));
                    return Ok(());
                }
                in_kafka = key == "kafka";
                t.entry(key.clone()).or_insert_with(|| {
                    if path[depth + 1].parse::<usize>().is_ok() {
                        toml::Value::Array(Vec::new())
                    } else {
                        toml::Value::Table(Default::default())
                    }
                })
            }
            toml::Value::Array(a) => {
                let i: usize = key.parse().map_err(|_| format!("{key:?} is not an array index"))?;
                if i > a.len() {
                    return Err(format!("index {i} skips elements (the array has {})", a.len()));
                }
                if i == a.len() {
                    a.push(toml::Value::Table(Default::default()));
                }
                if last {
                    a[i] = env_value(raw);
                    return Ok(());
                }
                &mut a[i]
            }
            _ => return Err(format!("{key:?} is inside a value that is not a table")),
        };
    }
    Ok(())
}

/// An environment value is read as TOML (numbers, booleans, arrays) when it parses, else as a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
