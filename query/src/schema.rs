//! Feature group schemas: the column types a feature group may declare and their
//! Arrow and Delta counterparts.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{ArrayType, DataType as DeltaType, PrimitiveType, StructField};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The time zone every stored timestamp carries. Delta's `timestamp` type is UTC microseconds.
pub const UTC: &str = "UTC";

/// Column types a feature group can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    #[serde(rename = "bool")]
    Bool,
    #[serde(rename = "int32")]
    Int32,
    #[serde(rename = "int64")]
    Int64,
    #[serde(rename = "float32")]
    Float32,
    #[serde(rename = "float64")]
    Float64,
    #[serde(rename = "string")]
    String,
    #[serde(rename = "timestamp")]
    Timestamp,
    #[serde(rename = "date")]
    Date,
    /// Embeddings: a variable-length list of 32-bit floats.
    #[serde(rename = "list<float32>")]
    ListFloat32,
}

impl ColumnType {
    pub const ALL: [ColumnType; 9] = [
        ColumnType::Bool,
        ColumnType::Int32,
        ColumnType::Int64,
        ColumnType::Float32,
        ColumnType::Float64,
        ColumnType::String,
        ColumnType::Timestamp,
        ColumnType::Date,
        ColumnType::ListFloat32,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Bool => "bool",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float32 => "float32",
            ColumnType::Float64 => "float64",
            ColumnType::String => "string",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Date => "date",
            ColumnType::ListFloat32 => "list<float32>",
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            ColumnType::Date => DataType::Date32,
            ColumnType::ListFloat32 => {
                DataType::List(Arc::new(Field::new("element", DataType::Float32, true)))
            }
        }
    }

    fn delta_type(self) -> DeltaType {
        match self {
            ColumnType::Bool => DeltaType::Primitive(PrimitiveType::Boolean),
            ColumnType::Int32 => DeltaType::Primitive(PrimitiveType::Integer),
            ColumnType::Int64 => DeltaType::Primitive(PrimitiveType::Long),
            ColumnType::Float32 => DeltaType::Primitive(PrimitiveType::Float),
            ColumnType::Float64 => DeltaType::Primitive(PrimitiveType::Double),
            ColumnType::String => DeltaType::Primitive(PrimitiveType::String),
            ColumnType::Timestamp => DeltaType::Primitive(PrimitiveType::Timestamp),
            ColumnType::Date => DeltaType::Primitive(PrimitiveType::Date),
            ColumnType::ListFloat32 => DeltaType::Array(Box::new(ArrayType::new(
                DeltaType::Primitive(PrimitiveType::Float),
                true,
            ))),
        }
    }

    /// Types usable as entity keys: exact, hashable, and comparable across clients.
    pub fn valid_as_key(self) -> bool {
        matches!(self, ColumnType::Int32 | ColumnType::Int64 | ColumnType::String)
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One declared column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub dtype: ColumnType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Column {
    pub fn new(name: impl Into<String>, dtype: ColumnType) -> Self {
        Column { name: name.into(), dtype, description: None }
    }
}

/// The full schema of a feature group: entity keys, the event-time column and features.
/// Keys and event time are non-nullable; features are always nullable so that schema
/// evolution can add them without rewriting data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSchema {
    pub entity_keys: Vec<Column>,
    pub event_time: String,
    pub features: Vec<Column>,
}

/// Column names are restricted to what every engine reading the Delta table accepts
/// without quoting surprises (Spark, DuckDB, Polars, our SQL layer).
pub fn validate_column_name(name: &str) -> Result<()> {
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let ok_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if name.is_empty() || name.len() > 128 || !ok_start || !ok_rest {
        return Err(Error::InvalidSchema(format!(
            "column name `{name}` must start with a letter or `_`, contain only letters, digits and `_`, and be at most 128 characters"
        )));
    }
    Ok(())
}

impl FeatureSchema {
    /// Checks names, key types and uniqueness.
    pub fn validate(&self) -> Result<()> {
        if self.entity_keys.is_empty() {
            return Err(Error::InvalidSchema("at least one entity key column is required".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for c in self.all_columns() {
            validate_column_name(&c.name)?;
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(Error::InvalidSchema(format!(
                    "column `{}` is declared more than once (names are case-insensitive)",
                    c.name
                )));
            }
        }
        for k in &self.entity_keys {
            if !k.dtype.valid_as_key() {
                return Err(Error::InvalidSchema(format!(
                    "entity key `{}` has type {}; keys must be int32, int64 or string",
                    k.name, k.dtype
                )));
            }
        }
        validate_column_name(&self.event_time)?;
        Ok(())
    }

    /// All columns in storage order: keys, event time, features.
    pub fn all_columns(&self) -> Vec<Column> {
        let mut cols = self.entity_keys.clone();
        cols.push(Column::new(self.event_time.clone(), ColumnType::Timestamp));
        cols.extend(self.features.iter().cloned());
        cols
    }

    pub fn is_required(&self, name: &str) -> bool {
        name == self.event_time || self.entity_keys.iter().any(|k| k.name == name)
    }

    pub fn column(&self, name: &str) -> Option<Column> {
        self.all_columns().into_iter().find(|c| c.name == name)
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .all_columns()
            .into_iter()
            .map(|c| {
                let nullable = !self.is_required(&c.name);
                Field::new(&c.name, c.dtype.arrow_type(), nullable)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    pub fn delta_fields(&self) -> Vec<StructField> {
        self.all_columns()
            .into_iter()
            .map(|c| StructField::new(c.name.clone(), c.dtype.delta_type(), !self.is_required(&c.name)))
            .collect()
    }

    /// Checks that `next` only adds nullable feature columns to `self`, and returns the
    /// added columns. Anything else (type change, key change, dropped column) is refused
    /// with the column it concerns.
    pub fn evolution_to(&self, next: &FeatureSchema) -> Result<Vec<Column>> {
        next.validate()?;
        if next.event_time != self.event_time {
            return Err(Error::IncompatibleSchemaChange {
                column: next.event_time.clone(),
                detail: format!("the event-time column is `{}` and cannot change", self.event_time),
            });
        }
        if next.entity_keys != self.entity_keys {
            let column = self
                .entity_keys
                .iter()
                .zip(next.entity_keys.iter())
                .find(|(a, b)| a != b)
                .map(|(a, _)| a.name.clone())
                .or_else(|| {
                    let longer = if next.entity_keys.len() > self.entity_keys.len() {
                        &next.entity_keys
                    } else {
                        &self.entity_keys
                    };
                    longer.get(self.entity_keys.len().min(next.entity_keys.len())).map(|c| c.name.clone())
                })
                .unwrap_or_default();
            return Err(Error::IncompatibleSchemaChange {
                column,
                detail: "entity key columns cannot change".into(),
            });
        }
        for old in &self.features {
            match next.features.iter().find(|c| c.name == old.name) {
                None => {
                    return Err(Error::IncompatibleSchemaChange {
                        column: old.name.clone(),
                        detail: "columns cannot be dropped; readers of earlier versions depend on them".into(),
                    })
                }
                Some(new) if new.dtype != old.dtype => {
                    return Err(Error::IncompatibleSchemaChange {
                        column: old.name.clone(),
                        detail: format!("type cannot change from {} to {}", old.dtype, new.dtype),
                    })
                }
                Some(_) => {}
            }
        }
        let added: Vec<Column> = next
            .features
            .iter()
            .filter(|c| !self.features.iter().any(|o| o.name == c.name))
            .cloned()
            .collect();
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> FeatureSchema {
        FeatureSchema {
            entity_keys: vec![Column::new("user_id", ColumnType::Int64)],
            event_time: "ts".into(),
            features: vec![Column::new("clicks", ColumnType::Int32)],
        }
    }

    #[test]
    fn evolution_accepts_added_columns_only() {
        let mut next = schema();
        next.features.push(Column::new("ctr", ColumnType::Float64));
        let added = schema().evolution_to(&next).unwrap();
        assert_eq!(added, vec![Column::new("ctr", ColumnType::Float64)]);
    }

    #[test]
    fn evolution_refuses_type_change_drop_and_key_change() {
        let mut changed = schema();
        changed.features[0].dtype = ColumnType::Int64;
        let err = schema().evolution_to(&changed).unwrap_err();
        assert!(matches!(err, Error::IncompatibleSchemaChange { ref column, .. } if column == "clicks"), "{err}");

        let mut dropped = schema();
        dropped.features.clear();
        let err = schema().evolution_to(&dropped).unwrap_err();
        assert!(matches!(err, Error::IncompatibleSchemaChange { ref column, .. } if column == "clicks"));

        let mut rekeyed = schema();
        rekeyed.entity_keys[0].dtype = ColumnType::String;
        let err = schema().evolution_to(&rekeyed).unwrap_err();
        assert!(matches!(err, Error::IncompatibleSchemaChange { ref column, .. } if column == "user_id"));
    }

    #[test]
    fn validate_rejects_bad_names_and_key_types() {
        let mut s = schema();
        s.features.push(Column::new("bad name", ColumnType::Bool));
        assert!(s.validate().is_err());
        let mut s = schema();
        s.entity_keys[0].dtype = ColumnType::Float64;
        assert!(s.validate().is_err());
        let mut s = schema();
        s.features.push(Column::new("USER_ID", ColumnType::Bool));
        assert!(s.validate().is_err());
    }
}
