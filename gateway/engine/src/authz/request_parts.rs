//! The two parts of a Cedar request the gateway builds per cold decision — the entity set and
//! the context record — made with cedar-policy-core where cedar-policy's constructors do work
//! whose result is known in advance. Together they were two thirds of building a request
//! (bench/results/2026-12-06-decision-split.md).
//!
//! **Entities.** `cedar_policy::Entities::from_entities` computes the closure of the ancestor
//! relation (and checks it for cycles) on every call. A request's entities are a handful — the
//! principal, the tenant, the resource, perhaps the principal's other tenant — plus the action
//! and its groups, which Cedar closed when it loaded the schema. The principal's parents are its
//! role ladder, already expanded; the others' parents are roles, groups or folders that are not in
//! the set. Then the closure over the set is the set as it is and no cycle can exist, and the
//! entities go in as they are (`TCComputation::AssumeAlreadyComputed`, shared, not copied). When
//! an entity names as an ancestor a member of the set that has ancestors of its own (a resource
//! that is one of the principal's roles, a record whose parent is the principal …), or itself,
//! Cedar computes the closure exactly as before.
//!
//! **Context.** `cedar_policy::Context::from_pairs` builds a record expression and evaluates it.
//! The gateway's facts are mostly plain values (hour, method, flags), which go into the record as
//! values; only values given as expressions (an `ipaddr`, a schema-typed declared fact) are
//! evaluated, one by one. A key given twice is an error, as in Cedar.
//!
//! cedar-policy has no public way to do either; its core crate does, and cedar-policy converts
//! that crate's `Entities` and `Context` into its own.

use std::collections::btree_map::{BTreeMap, Entry};
use std::sync::Arc;

use cedar_policy::{Context, Entities, RestrictedExpression};
use cedar_policy_core::ast::{Context as CoreContext, Entity as CoreEntity, Value};
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

/// An entity in cedar-policy-core's form, as a request's entity set takes it (one copy, made
/// when the entity is built or loaded, not per request).
pub(crate) fn core_entity(entity: &cedar_policy::Entity) -> Arc<CoreEntity> {
    Arc::new(entity.as_ref().clone())
}

/// The entities of a request: `actions` (the action and its groups, closed by the schema) and
/// `others` (principal, tenant, resource …), with duplicate ids refused as Cedar refuses them.
pub(crate) fn request_entities(
    actions: &[Arc<CoreEntity>],
    others: Vec<Arc<CoreEntity>>,
) -> Result<Entities, String> {
    let closed = others.iter().all(|entity| {
        entity.ancestors().all(|ancestor| {
            actions
                .iter()
                .chain(&others)
                .filter(|member| member.uid() == ancestor)
                .all(|member| member.ancestors().next().is_none())
        })
    });
    let all = actions.iter().cloned().chain(others);
    let entities = if closed {
        CoreEntities::new().add_entities(
            all,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
    } else {
        CoreEntities::from_entities(
            all.map(|entity| (*entity).clone()),
            None::<&NoEntitiesSchema>,
            TCComputation::ComputeNow,
            Extensions::all_available(),
        )
    };
    entities.map(Entities::from).map_err(|e| e.to_string())
}

/// A request's context record, built from values.
#[derive(Default)]
pub(crate) struct ContextRecord(BTreeMap<SmolStr, Value>);

impl ContextRecord {
    /// Adds a plain value (`bool`, `i64`, `&str`, `String` …).
    pub(crate) fn value(&mut self, name: &str, value: impl Into<Value>) -> Result<(), String> {
        match self.0.entry(SmolStr::new(name)) {
            Entry::Vacant(slot) => {
                slot.insert(value.into());
                Ok(())
            }
            Entry::Occupied(_) => Err(format!("duplicate key `{name}` in context")),
        }
    }

    /// Adds the value of a restricted expression (an extension value, an entity reference, a
    /// set or record of them).
    pub(crate) fn expression(
        &mut self,
        name: &str,
        expression: &RestrictedExpression,
    ) -> Result<(), String> {
        let value = RestrictedEvaluator::new(Extensions::all_available())
            .interpret(expression.as_ref().as_borrowed())
            .map_err(|e| format!("context attribute `{name}`: {e}"))?;
        self.value(name, value)
    }

    pub(crate) fn into_context(self) -> Context {
        Context::from(CoreContext::Value(Arc::new(self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Entity, EntityUid};
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::str::FromStr;

    const POOL: [&str; 8] = [
        r#"User::"alice""#,
        r#"User::"bob""#,
        r#"Role::"viewer""#,
        r#"Role::"editor""#,
        r#"Tenant::"acme""#,
        r#"Tenant::"globex""#,
        r#"Document::"1""#,
        r#"Action::"read""#,
    ];

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).expect("uid")
    }

    /// `Action::"read"` in `Action::"write"` in `Action::"all"`, closed as the schema closes
    /// them.
    fn actions() -> Vec<Arc<CoreEntity>> {
        let chain = [
            (r#"Action::"read""#, Some(r#"Action::"write""#)),
            (r#"Action::"write""#, Some(r#"Action::"all""#)),
            (r#"Action::"all""#, None),
        ];
        let entities = Entities::from_entities(
            chain.iter().map(|(id, parent)| {
                Entity::new_no_attrs(uid(id), parent.iter().map(|p| uid(p)).collect())
            }),
            None,
        )
        .expect("actions");
        entities.iter().map(core_entity).collect()
    }

    /// An entity of `POOL[id]` whose parents are the pool entries of `parents`' bits, with
    /// `mark` as an attribute (two entities of one id differ when their marks do).
    fn entity(id: usize, parents: u8, mark: bool) -> Arc<CoreEntity> {
        let parents: HashSet<EntityUid> = (0..POOL.len())
            .filter(|bit| parents & (1 << bit) != 0)
            .map(|bit| uid(POOL[bit]))
            .collect();
        let attrs = [(
            "mark".to_string(),
            cedar_policy::RestrictedExpression::new_bool(mark),
        )]
        .into_iter()
        .collect();
        let entity = Entity::new(uid(POOL[id]), attrs, parents).expect("entity");
        core_entity(&entity)
    }

    /// What `cedar_policy::Entities::from_entities` makes of the same list.
    fn by_cedar(
        actions: &[Arc<CoreEntity>],
        others: &[Arc<CoreEntity>],
    ) -> Result<Entities, String> {
        Entities::from_entities(
            actions
                .iter()
                .chain(others)
                .map(|e| Entity::from((**e).clone())),
            None,
        )
        .map_err(|e| e.to_string())
    }

    fn same(ours: &Result<Entities, String>, cedar: &Result<Entities, String>) -> bool {
        match (ours, cedar) {
            (Ok(a), Ok(b)) => a.as_ref().deep_eq(b.as_ref()),
            (Err(_), Err(_)) => true,
            _ => false,
        }
    }

    #[test]
    fn a_request_whose_parents_are_outside_the_set_is_taken_as_it_is() {
        let actions = actions();
        // alice in viewer and editor (her ladder), acme, document 1 of acme … whose parent is
        // the tenant, which has no ancestors.
        let others = vec![
            entity(0, 0b0000_1100, false),
            entity(4, 0, false),
            entity(6, 0b0001_0000, false),
        ];
        let ours = request_entities(&actions, others.clone());
        assert!(same(&ours, &by_cedar(&actions, &others)));
        let ours = ours.expect("entities");
        assert!(ours.is_ancestor_of(&uid(r#"Action::"all""#), &uid(r#"Action::"read""#)));
        assert!(ours.is_ancestor_of(&uid(r#"Role::"editor""#), &uid(r#"User::"alice""#)));
    }

    #[test]
    fn a_parent_inside_the_set_with_ancestors_is_closed_by_cedar() {
        let actions = actions();
        // The resource is Role::"viewer", in Role::"editor"; alice is a viewer: the closure
        // makes her an editor too.
        let others = vec![entity(0, 0b0000_0100, false), entity(2, 0b0000_1000, false)];
        let ours = request_entities(&actions, others.clone()).expect("entities");
        assert!(ours.is_ancestor_of(&uid(r#"Role::"editor""#), &uid(r#"User::"alice""#)));
        assert!(same(&Ok(ours), &by_cedar(&actions, &others)));
    }

    #[test]
    fn cycles_and_conflicting_duplicates_are_refused() {
        let actions = actions();
        let cycle = vec![entity(0, 0b0000_0010, false), entity(1, 0b0000_0001, false)];
        assert!(request_entities(&actions, cycle).is_err());
        let own_parent = vec![entity(0, 0b0000_0001, false)];
        assert!(request_entities(&actions, own_parent).is_err());
        let duplicate = vec![entity(4, 0, false), entity(4, 0, true)];
        assert!(request_entities(&actions, duplicate).is_err());
        let identical = vec![entity(4, 0, false), entity(4, 0, false)];
        assert!(request_entities(&actions, identical).is_ok());
    }

    /// Parent sets of about one pool entry in eight, so that most lists name no member as a
    /// parent (the fast path) and many do.
    fn sparse() -> impl Strategy<Value = u8> {
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| a & b & c)
    }

    #[test]
    fn the_context_record_is_the_record_cedar_builds() {
        let ip = RestrictedExpression::new_ip("10.1.2.3");
        let mut ours = ContextRecord::default();
        ours.value("hour", 13i64).expect("hour");
        ours.value("mfa", true).expect("mfa");
        ours.value("method", "PUT").expect("method");
        ours.expression("ip", &ip).expect("ip");
        let cedar = Context::from_pairs([
            (
                "method".to_string(),
                RestrictedExpression::new_string("PUT".into()),
            ),
            ("ip".to_string(), ip.clone()),
            ("hour".to_string(), RestrictedExpression::new_long(13)),
            ("mfa".to_string(), RestrictedExpression::new_bool(true)),
        ])
        .expect("context");
        assert_eq!(
            format!("{:?}", ours.into_context().as_ref()),
            format!("{:?}", cedar.as_ref())
        );

        let mut twice = ContextRecord::default();
        twice.value("hour", 1i64).expect("hour");
        assert!(twice.value("hour", 2i64).is_err());
        assert!(twice.expression("hour", &ip).is_err());
        let bad = RestrictedExpression::new_ip("not an address");
        assert!(ContextRecord::default().expression("ip", &bad).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever the list, the entities are those Cedar's own constructor makes (closure,
        /// cycle and duplicate errors included).
        #[test]
        fn the_same_entities_as_cedar_computes(
            list in prop::collection::vec((0..POOL.len(), sparse(), any::<bool>()), 0..6),
        ) {
            let actions = actions();
            let others: Vec<_> = list
                .iter()
                .map(|&(id, parents, mark)| entity(id, parents, mark))
                .collect();
            let ours = request_entities(&actions, others.clone());
            let cedar = by_cedar(&actions, &others);
            prop_assert!(same(&ours, &cedar), "ours {ours:?}\ncedar {cedar:?}");
        }
    }
}
