//! All CRDs of the API, and their rendering as the YAML committed under `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::{AutoscalingPolicy, ReplicatedService, RolloutStrategy, ShardedService};

/// Every CRD of the `outrigger.dev` group, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        ReplicatedService::crd(),
        ShardedService::crd(),
        AutoscalingPolicy::crd(),
        RolloutStrategy::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_nullable(schema);
            }
        }
    }
    crds
}

/// Optional fields are simply omitted, so `nullable` adds nothing; and Kubernetes before 1.25 drops
/// the `type` and the nested fields of nullable properties from the OpenAPI v2 document it publishes,
/// which leaves `kubectl explain` with nothing to show for every optional object. Without
/// `nullable`, the API server prunes an explicit `null` instead.
fn drop_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|properties| properties.values_mut())
        .chain(schema.items.iter_mut().filter_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(schema) => Some(schema.as_mut()),
            JSONSchemaPropsOrArray::Schemas(_) => None,
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|additional| match additional {
                    JSONSchemaPropsOrBool::Schema(schema) => Some(schema.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        );
    for child in children {
        drop_nullable(child);
    }
    for list in [&mut schema.one_of, &mut schema.any_of, &mut schema.all_of]
        .into_iter()
        .flatten()
    {
        list.iter_mut().for_each(drop_nullable);
    }
}

/// Renders one CRD as a YAML document.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// The file name a CRD is committed under (`crds/<plural>.<group>.yaml`).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}
