//! Scoring inputs: MLflow's JSON shapes and CSV, checked and narrowed to a model's inputs,
//! and rows built from entity keys with their features looked up in the online store.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::online::{EntityRows, FeatureRef, OnlineStore};
use crate::platform::time::now_micros;

/// Rows to score, by column name (row-major values).
#[derive(Debug, Default)]
pub struct ScoringInput {
    pub columns: Vec<String>,
    pub values: Vec<Value>,
    pub rows: usize,
}

impl ScoringInput {
    fn from_records(records: &[Value], what: &str) -> Result<ScoringInput> {
        let rows = EntityRows::from_rows(records, what)?;
        Ok(ScoringInput { columns: rows.columns, values: rows.values, rows: rows.rows })
    }

    fn from_positional(rows: &[Value], inputs: &[String], what: &str) -> Result<ScoringInput> {
        let mut values = Vec::with_capacity(rows.len() * inputs.len());
        for (i, row) in rows.iter().enumerate() {
            match row {
                Value::Array(cells) if cells.len() == inputs.len() => values.extend(cells.iter().cloned()),
                Value::Array(cells) => {
                    return Err(Error::Unprocessable(format!(
                        "{what}[{i}] has {} values; the model takes {} inputs ({})",
                        cells.len(),
                        inputs.len(),
                        inputs.join(", ")
                    )));
                }
                scalar if inputs.len() == 1 => values.push(scalar.clone()),
                _ => return Err(Error::Unprocessable(format!("{what}[{i}] must be a list of {} values or an object", inputs.len()))),
            }
        }
        Ok(ScoringInput { columns: inputs.to_vec(), values, rows: rows.len() })
    }

    /// The MLflow scoring-server JSON inputs: `dataframe_split`, `dataframe_records`,
    /// `instances` or `inputs`. Positional rows follow the model's input order.
    pub fn from_mlflow_json(body: &Value, inputs: &[String]) -> Result<ScoringInput> {
        let Value::Object(map) = body else {
            return Err(Error::Unprocessable("the body must be a JSON object with one of dataframe_split, dataframe_records, instances, inputs".into()));
        };
        if let Some(params) = map.get("params")
            && !(params.is_null() || params.as_object().is_some_and(|o| o.is_empty()))
        {
            return Err(Error::Unprocessable("these models take no `params`".into()));
        }
        let keys: Vec<&str> = map.keys().map(String::as_str).filter(|k| *k != "params").collect();
        let [key] = keys.as_slice() else {
            return Err(Error::Unprocessable(format!(
                "give exactly one of dataframe_split, dataframe_records, instances, inputs (got {})",
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
            )));
        };
        let v = &map[*key];
        match (*key, v) {
            ("dataframe_split", Value::Object(split)) => {
                let columns: Vec<String> = match split.get("columns") {
                    Some(Value::Array(c)) => c
                        .iter()
                        .map(|n| n.as_str().map(str::to_string).ok_or_else(|| Error::Unprocessable(format!("dataframe_split.columns: {n} is not a column name"))))
                        .collect::<Result<_>>()?,
                    None => inputs.to_vec(),
                    Some(_) => return Err(Error::Unprocessable("dataframe_split.columns must be a list of names".into())),
                };
                let Some(Value::Array(data)) = split.get("data") else {
                    return Err(Error::Unprocessable("dataframe_split.data must be a list of rows".into()));
                };
                let mut values = Vec::with_capacity(data.len() * columns.len());
                for (i, row) in data.iter().enumerate() {
                    match row {
                        Value::Array(cells) if cells.len() == columns.len() => values.extend(cells.iter().cloned()),
                        _ => {
                            return Err(Error::Unprocessable(format!(
                                "dataframe_split.data[{i}] must be a list of {} values, one per column",
                                columns.len()
                            )));
                        }
                    }
                }
                Ok(ScoringInput { columns, values, rows: data.len() })
            }
            ("dataframe_records", Value::Array(records)) => Self::from_records(records, "dataframe_records"),
            ("instances" | "inputs", Value::Array(rows)) => {
                if rows.iter().all(Value::is_object) && !rows.is_empty() {
                    Self::from_records(rows, key)
                } else {
                    Self::from_positional(rows, inputs, key)
                }
            }
            ("inputs" | "instances", Value::Object(_)) => {
                // Columnar: {"col": [..], ..}
                let rows = EntityRows::parse_named(v, key)?;
                Ok(ScoringInput { columns: rows.columns, values: rows.values, rows: rows.rows })
            }
            (k @ ("dataframe_split" | "dataframe_records" | "instances" | "inputs"), _) => {
                Err(Error::Unprocessable(format!("`{k}` has the wrong shape; see the MLflow scoring protocol")))
            }
            (other, _) => Err(Error::Unprocessable(format!(
                "unknown input `{other}`; give one of dataframe_split, dataframe_records, instances, inputs, or entities"
            ))),
        }
    }

    /// `text/csv` with a header row. Cells that parse as numbers are numbers; empty
    /// cells are null; anything else is text.
    pub fn from_csv(bytes: &[u8]) -> Result<ScoringInput> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::Unprocessable("the CSV body is not UTF-8".into()))?;
        let mut reader = csv_rows(text);
        let header = reader.next().ok_or_else(|| Error::Unprocessable("the CSV body is empty; it needs a header row".into()))?;
        let columns: Vec<String> = header.into_iter().map(|c| c.trim().to_string()).collect();
        let mut values = Vec::new();
        let mut rows = 0;
        for (i, row) in reader.enumerate() {
            if row.len() == 1 && row[0].is_empty() {
                continue;
            }
            if row.len() != columns.len() {
                return Err(Error::Unprocessable(format!("CSV line {} has {} fields; the header has {}", i + 2, row.len(), columns.len())));
            }
            for cell in row {
                values.push(if cell.is_empty() {
                    Value::Null
                } else if let Ok(n) = cell.parse::<f64>() {
                    serde_json::Number::from_f64(n).map_or(Value::String(cell), Value::Number)
                } else {
                    Value::String(cell)
                });
            }
            rows += 1;
        }
        Ok(ScoringInput { columns, values, rows })
    }
}

/// Splits CSV text into rows of fields (RFC 4180 quoting).
fn csv_rows(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        chars.peek()?;
        let mut row = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => {
                    row.push(std::mem::take(&mut field));
                    return Some(row);
                }
                Some('"') if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                Some('"') if quoted => quoted = false,
                Some('"') if field.is_empty() => quoted = true,
                Some(',') if !quoted => row.push(std::mem::take(&mut field)),
                Some('\r') if !quoted => {}
                Some('\n') if !quoted => {
                    row.push(std::mem::take(&mut field));
                    return Some(row);
                }
                Some(c) => field.push(c),
            }
        }
    })
}

/// For predictions by entity: the model inputs that are online features
/// (`group__feature`, as training sets name them) and the groups they come from.
pub fn online_inputs(store: &OnlineStore, tenant_id: &str, inputs: &[String]) -> Vec<Option<FeatureRef>> {
    inputs
        .iter()
        .map(|name| {
            // Group and feature names may themselves hold `__`: try every split.
            name.match_indices("__").find_map(|(i, _)| {
                let (group, feature) = (&name[..i], &name[i + 2..]);
                let g = store.group(tenant_id, group)?;
                let index = g.table.read().expect("online group lock").features.iter().position(|f| f == feature)?;
                Some(FeatureRef { group: g.clone(), index, feature: feature.to_string() })
            })
        })
        .collect()
}

/// Scoring rows built from entity keys.
pub struct EntityInput {
    pub input: ScoringInput,
    /// The online groups and the Delta versions served.
    pub served: Vec<(String, i64)>,
    /// `input[row]=STATUS` for every looked-up value that was not present.
    pub missing: Vec<String>,
}

/// Builds scoring rows from entity keys: online features looked up, other inputs taken
/// from the entity rows.
pub async fn input_from_entities(store: &OnlineStore, tenant_id: &str, inputs: &[String], entities: &EntityRows) -> Result<EntityInput> {
    let refs = online_inputs(store, tenant_id, inputs);
    let mut lookups = Vec::new();
    let mut positions = Vec::new();
    for (i, (name, r)) in inputs.iter().zip(refs).enumerate() {
        match r {
            Some(r) => {
                lookups.push(r);
                positions.push(i);
            }
            None if entities.columns.contains(name) => {}
            None => {
                return Err(Error::Unprocessable(format!(
                    "model input `{name}` is not a feature of an online group (`group__feature`) and the entity rows do not carry it"
                )));
            }
        }
    }
    let crate::online::Found { values: found, versions } = store.lookup(&lookups, entities, now_micros()).await?;
    let mut values = vec![Value::Null; entities.rows * inputs.len()];
    let mut missing = Vec::new();
    for (i, name) in inputs.iter().enumerate() {
        if let Some(k) = positions.iter().position(|&p| p == i) {
            for (r, l) in found[k].iter().enumerate() {
                if l.status != "PRESENT" {
                    missing.push(format!("{name}[{r}]={}", l.status));
                }
                values[r * inputs.len() + i] = l.value.clone();
            }
        } else {
            for r in 0..entities.rows {
                values[r * inputs.len() + i] = entities.get(r, name).cloned().unwrap_or(Value::Null);
            }
        }
    }
    Ok(EntityInput { input: ScoringInput { columns: inputs.to_vec(), values, rows: entities.rows }, served: versions, missing })
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn every_mlflow_json_shape_gives_the_same_rows() {
        let shapes = [
            json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}}),
            json!({"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}),
            json!({"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]}),
            json!({"instances": [[1, "x"], [2, "y"]]}),
            json!({"inputs": {"a": [1, 2], "b": ["x", "y"]}}),
            json!({"inputs": [[1, "x"], [2, "y"]], "params": {}}),
        ];
        for s in shapes {
            let i = ScoringInput::from_mlflow_json(&s, &names()).unwrap();
            assert_eq!(i.rows, 2, "{s}");
            let b = i.columns.iter().position(|c| c == "b").unwrap();
            assert_eq!(i.values[i.columns.len() + b], json!("y"), "{s}");
        }
    }

    #[test]
    fn malformed_inputs_are_named() {
        let err = |v: Value| ScoringInput::from_mlflow_json(&v, &names()).unwrap_err().to_string();
        assert!(err(json!({"instances": [[1]]})).contains("instances[0] has 1 values"));
        assert!(err(json!({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}})).contains("dataframe_split.data[0]"));
        assert!(err(json!({"instances": [], "inputs": []})).contains("exactly one"));
        assert!(err(json!({"rows": []})).contains("unknown input `rows`"));
        assert!(err(json!({"inputs": [[1, 2]], "params": {"t": 1}})).contains("params"));
    }

    #[test]
    fn csv_bodies_parse_with_quotes_and_nulls() {
        let i = ScoringInput::from_csv(b"a,b\n1.5,\"x, y\"\n,z\n").unwrap();
        assert_eq!(i.rows, 2);
        assert_eq!(i.values, vec![json!(1.5), json!("x, y"), Value::Null, json!("z")]);
        assert!(ScoringInput::from_csv(b"a,b\n1\n").unwrap_err().to_string().contains("line 2 has 1 fields"));
    }
}
