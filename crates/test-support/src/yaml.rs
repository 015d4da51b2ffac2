//! The key paths of a YAML document, for tests that hold one document's keys to another's.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every key path of a document read as JSON: `limits.idle_timeout`, and `outbound[].identity`
/// for the keys of a list's items.
pub fn key_paths(document: &Value) -> BTreeSet<String> {
    fn walk(value: &Value, prefix: &str, found: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    found.insert(path.clone());
                    walk(child, &path, found);
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{prefix}[]"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = BTreeSet::new();
    walk(document, "", &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_and_list_items_have_paths() {
        let document = serde_json::json!({"a": {"b": 1}, "l": [{"c": 2}, 3]});
        let paths: Vec<String> = key_paths(&document).into_iter().collect();
        assert_eq!(paths, ["a", "a.b", "l", "l[].c"]);
    }
}
