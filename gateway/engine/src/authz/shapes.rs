//! The attribute types the schema declares, read from its JSON form, and the conversion of a
//! JSON value (a token claim, a request fact) into a Cedar value of such a type.
//!
//! Cedar validates policies against the schema, but the values the gateway puts into entities
//! and the context come from outside (tokens, requests): they are converted here by the type the
//! schema gives the attribute, so a policy reading `principal.clearance >= 3` gets a `Long` or
//! nothing (`principal has clearance` is false), never a string that makes it fail to evaluate.

use std::collections::HashMap;
use std::net::IpAddr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, RestrictedExpression, SchemaFragment};
use serde_json::Value;

/// A Cedar attribute type, as far as values from outside can have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrType {
    String,
    Long,
    Bool,
    Set(Box<AttrType>),
    /// A reference to an entity of this type (e.g. `User`).
    Entity(String),
    IpAddr,
    Decimal,
    /// Records, `datetime`, `duration` and the like: declared, but not fillable from a claim
    /// or a request fact.
    Other(String),
}

/// One declared attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrShape {
    pub ty: AttrType,
    pub required: bool,
}

/// The attributes of every entity type and of the request context.
#[derive(Debug, Clone, Default)]
pub struct SchemaShapes {
    /// Entity type basename → attribute name → shape.
    pub entities: HashMap<String, HashMap<String, AttrShape>>,
    /// The context record of the actions (the first action's; the example schema gives every
    /// action the same `RequestContext`).
    pub context: HashMap<String, AttrShape>,
}

impl SchemaShapes {
    /// Reads the shapes from the schema text (Cedar syntax).
    pub fn from_cedarschema(text: &str) -> Result<SchemaShapes, String> {
        let (fragment, _) =
            SchemaFragment::from_cedarschema_str(text).map_err(|e| e.to_string())?;
        let json = fragment.to_json_value().map_err(|e| e.to_string())?;
        Ok(SchemaShapes::from_json(&json))
    }

    fn from_json(json: &Value) -> SchemaShapes {
        let mut shapes = SchemaShapes::default();
        let Some(namespaces) = json.as_object() else {
            return shapes;
        };
        // Common types and entity types of every namespace, by basename.
        let mut common: HashMap<String, Value> = HashMap::new();
        let mut entity_names: Vec<String> = Vec::new();
        for namespace in namespaces.values() {
            if let Some(types) = namespace.get("commonTypes").and_then(Value::as_object) {
                for (name, ty) in types {
                    common.insert(name.clone(), ty.clone());
                }
            }
            if let Some(types) = namespace.get("entityTypes").and_then(Value::as_object) {
                entity_names.extend(types.keys().cloned());
            }
        }
        let resolver = Resolver {
            common: &common,
            entities: &entity_names,
        };
        for namespace in namespaces.values() {
            if let Some(types) = namespace.get("entityTypes").and_then(Value::as_object) {
                for (name, ty) in types {
                    let attrs = ty
                        .get("shape")
                        .map(|shape| resolver.record(shape))
                        .unwrap_or_default();
                    shapes.entities.insert(name.clone(), attrs);
                }
            }
            if shapes.context.is_empty() {
                let context = namespace
                    .get("actions")
                    .and_then(Value::as_object)
                    .and_then(|actions| {
                        actions
                            .values()
                            .find_map(|a| a.get("appliesTo").and_then(|t| t.get("context")))
                    });
                if let Some(context) = context {
                    shapes.context = resolver.record(context);
                }
            }
        }
        shapes
    }

    /// The attribute `name` of entity type `entity_type`, if declared.
    pub fn entity_attribute(&self, entity_type: &str, name: &str) -> Option<&AttrShape> {
        self.entities.get(entity_type)?.get(name)
    }
}

struct Resolver<'a> {
    common: &'a HashMap<String, Value>,
    entities: &'a [String],
}

impl Resolver<'_> {
    fn record(&self, ty: &Value) -> HashMap<String, AttrShape> {
        let ty = self.deref_common(ty, 0);
        let Some(attributes) = ty.get("attributes").and_then(Value::as_object) else {
            return HashMap::new();
        };
        attributes
            .iter()
            .map(|(name, attr)| {
                let required = attr
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                (
                    name.clone(),
                    AttrShape {
                        ty: self.ty(attr, 0),
                        required,
                    },
                )
            })
            .collect()
    }

    /// A common type's definition in place of its name (bounded: a schema cannot define a
    /// cycle, but the depth guard keeps a malformed one from recursing forever).
    fn deref_common<'v>(&'v self, ty: &'v Value, depth: usize) -> &'v Value {
        // A reference is `{"type": "EntityOrCommon", "name": N}` or, in places such as an
        // action's context, `{"type": N}`.
        let target = match ty.get("type").and_then(Value::as_str) {
            Some("EntityOrCommon") => ty.get("name").and_then(Value::as_str).unwrap_or_default(),
            Some(other) => other,
            None => return ty,
        };
        match self.common.get(basename(target)) {
            Some(def) if depth < 16 => self.deref_common(def, depth + 1),
            _ => ty,
        }
    }

    fn ty(&self, ty: &Value, depth: usize) -> AttrType {
        let ty = self.deref_common(ty, depth);
        let name = ty.get("name").and_then(Value::as_str).unwrap_or_default();
        match ty.get("type").and_then(Value::as_str).unwrap_or_default() {
            "String" => AttrType::String,
            "Long" => AttrType::Long,
            "Boolean" | "Bool" => AttrType::Bool,
            "Set" => match ty.get("element") {
                Some(element) if depth < 16 => AttrType::Set(Box::new(self.ty(element, depth + 1))),
                _ => AttrType::Other("Set".to_string()),
            },
            "Entity" => AttrType::Entity(basename(name).to_string()),
            "Extension" => extension(name),
            "EntityOrCommon" => match basename(name) {
                "String" => AttrType::String,
                "Long" => AttrType::Long,
                "Bool" | "Boolean" => AttrType::Bool,
                "ipaddr" | "decimal" | "datetime" | "duration" => extension(basename(name)),
                other if self.entities.iter().any(|e| e == other) => {
                    AttrType::Entity(other.to_string())
                }
                other => AttrType::Other(other.to_string()),
            },
            other => AttrType::Other(other.to_string()),
        }
    }
}

fn extension(name: &str) -> AttrType {
    match name {
        "ipaddr" => AttrType::IpAddr,
        "decimal" => AttrType::Decimal,
        other => AttrType::Other(other.to_string()),
    }
}

/// `ns::Name` → `Name`; `__cedar::String` → `String`.
fn basename(name: &str) -> &str {
    name.rsplit("::").next().unwrap_or(name)
}

impl AttrType {
    /// Whether values from outside (claims, request facts) can have this type.
    pub fn is_fillable(&self) -> bool {
        match self {
            AttrType::Other(_) => false,
            AttrType::Set(element) => element.is_fillable(),
            _ => true,
        }
    }

    /// The type as the schema writes it, for messages.
    pub fn describe(&self) -> String {
        match self {
            AttrType::String => "String".to_string(),
            AttrType::Long => "Long".to_string(),
            AttrType::Bool => "Bool".to_string(),
            AttrType::Set(e) => format!("Set<{}>", e.describe()),
            AttrType::Entity(name) => name.clone(),
            AttrType::IpAddr => "ipaddr".to_string(),
            AttrType::Decimal => "decimal".to_string(),
            AttrType::Other(name) => name.clone(),
        }
    }

    /// The value `value` as a Cedar value of this type, or why it cannot be one. Lenient where
    /// identity providers are known to differ: a number may arrive as a numeric string, a
    /// boolean as `"true"`, a one-element set as a single value.
    pub fn convert(
        &self,
        value: &Value,
        entity_types: &HashMap<String, EntityTypeName>,
    ) -> Result<RestrictedExpression, String> {
        match (self, value) {
            (AttrType::String, Value::String(s)) => Ok(RestrictedExpression::new_string(s.clone())),
            (AttrType::Long, Value::Number(n)) => n
                .as_i64()
                .map(RestrictedExpression::new_long)
                .ok_or_else(|| format!("{n} is not a whole number in Long's range")),
            (AttrType::Long, Value::String(s)) => s
                .parse::<i64>()
                .map(RestrictedExpression::new_long)
                .map_err(|_| format!("{s:?} is not a whole number")),
            (AttrType::Bool, Value::Bool(b)) => Ok(RestrictedExpression::new_bool(*b)),
            (AttrType::Bool, Value::String(s)) if s == "true" || s == "false" => {
                Ok(RestrictedExpression::new_bool(s == "true"))
            }
            (AttrType::Set(element), Value::Array(items)) => {
                let converted = items
                    .iter()
                    .map(|item| element.convert(item, entity_types))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RestrictedExpression::new_set(converted))
            }
            (AttrType::Set(element), single) if !single.is_null() => {
                Ok(RestrictedExpression::new_set([
                    element.convert(single, entity_types)?
                ]))
            }
            (AttrType::Entity(type_name), Value::String(id)) => {
                let ty = entity_types
                    .get(type_name)
                    .ok_or_else(|| format!("the schema has no entity type `{type_name}`"))?;
                Ok(RestrictedExpression::new_entity_uid(
                    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id)),
                ))
            }
            (AttrType::IpAddr, Value::String(s)) if is_ip_or_cidr(s) => {
                Ok(RestrictedExpression::new_ip(s))
            }
            (AttrType::Decimal, Value::String(s)) if is_decimal(s) => {
                Ok(RestrictedExpression::new_decimal(s))
            }
            (AttrType::Decimal, Value::Number(n)) if is_decimal(&n.to_string()) => {
                Ok(RestrictedExpression::new_decimal(n.to_string()))
            }
            (ty, value) => Err(format!("{} is not a {}", kind(value), ty.describe())),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, prefix)) => {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            prefix.parse::<u8>().is_ok_and(|p| p <= max)
        }
        None => s.parse::<IpAddr>().is_ok(),
    }
}

/// Cedar's decimal: digits, a point, one to four digits.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    match digits.split_once('.') {
        Some((whole, fraction)) => {
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && (1..=4).contains(&fraction.len())
                && fraction.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"
        type Ctx = { plan?: String, page?: Long, from?: ipaddr };
        entity Tenant;
        entity Role;
        entity User in [Role] = {
            tenant: Tenant, clearance?: Long, groups?: Set<String>, manager?: User,
            contractor?: Bool, limit?: decimal, home?: ipaddr, profile?: { a: Long },
        };
        entity Doc = { tenant: Tenant, owner?: User };
        action "read" appliesTo { principal: User, resource: Doc, context: Ctx };
    "#;

    fn shapes() -> SchemaShapes {
        SchemaShapes::from_cedarschema(SCHEMA).expect("schema")
    }

    #[test]
    fn reads_entity_and_context_attribute_types() {
        let s = shapes();
        let user = |name: &str| s.entity_attribute("User", name).cloned();
        assert_eq!(
            user("tenant").map(|a| (a.ty, a.required)),
            Some((AttrType::Entity("Tenant".into()), true))
        );
        assert_eq!(
            user("clearance").map(|a| (a.ty, a.required)),
            Some((AttrType::Long, false))
        );
        assert_eq!(
            user("groups").map(|a| a.ty),
            Some(AttrType::Set(Box::new(AttrType::String)))
        );
        assert_eq!(
            user("manager").map(|a| a.ty),
            Some(AttrType::Entity("User".into()))
        );
        assert_eq!(user("contractor").map(|a| a.ty), Some(AttrType::Bool));
        assert_eq!(user("limit").map(|a| a.ty), Some(AttrType::Decimal));
        assert_eq!(user("home").map(|a| a.ty), Some(AttrType::IpAddr));
        assert!(!user("profile").expect("declared").ty.is_fillable());
        assert_eq!(user("missing"), None);
        assert_eq!(s.context.get("page").map(|a| &a.ty), Some(&AttrType::Long));
        assert_eq!(
            s.context.get("from").map(|a| &a.ty),
            Some(&AttrType::IpAddr)
        );
    }

    #[test]
    fn converts_claims_by_declared_type_and_refuses_mismatches() {
        let types = HashMap::from([(
            "User".to_string(),
            "User".parse::<EntityTypeName>().expect("type"),
        )]);
        let ok = |ty: AttrType, v: Value| ty.convert(&v, &types).is_ok();
        assert!(ok(AttrType::Long, json!(3)));
        assert!(ok(AttrType::Long, json!("3")));
        assert!(!ok(AttrType::Long, json!("three")));
        assert!(!ok(AttrType::Long, json!(3.5)));
        assert!(ok(AttrType::Bool, json!("true")));
        assert!(!ok(AttrType::Bool, json!(1)));
        assert!(ok(
            AttrType::Set(Box::new(AttrType::String)),
            json!(["a", "b"])
        ));
        assert!(ok(AttrType::Set(Box::new(AttrType::String)), json!("a")));
        assert!(!ok(
            AttrType::Set(Box::new(AttrType::String)),
            json!(["a", 1])
        ));
        assert!(ok(AttrType::Entity("User".into()), json!("bob")));
        assert!(!ok(AttrType::Entity("Nope".into()), json!("bob")));
        assert!(ok(AttrType::IpAddr, json!("10.0.0.0/8")));
        assert!(!ok(AttrType::IpAddr, json!("10.0.0.0/33")));
        assert!(ok(AttrType::Decimal, json!("12.50")));
        assert!(!ok(AttrType::Decimal, json!("12.50001")));
        let err = AttrType::Long.convert(&json!(["x"]), &types).unwrap_err();
        assert_eq!(err, "a list is not a Long");
    }
}
