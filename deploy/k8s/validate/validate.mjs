// Validates Kubernetes objects, read as YAML from stdin, against the API's OpenAPI schemas —
// offline: kubernetes-models ships them with an ajv validator for every kind (and
// @kubernetes-models/keda for KEDA's). Prints one line per object; exits 1 if any is invalid
// or of a kind it does not know.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import * as core from "kubernetes-models/v1";
import * as apps from "kubernetes-models/apps/v1";
import * as autoscaling from "kubernetes-models/autoscaling/v2";
import * as batch from "kubernetes-models/batch/v1";
import * as networking from "kubernetes-models/networking.k8s.io/v1";
import * as policy from "kubernetes-models/policy/v1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

const groups = {
  v1: core, "apps/v1": apps, "autoscaling/v2": autoscaling, "batch/v1": batch,
  "networking.k8s.io/v1": networking, "policy/v1": policy, "keda.sh/v1alpha1": keda,
};
let failed = 0;
for (const object of yaml.loadAll(readFileSync(0, "utf8")).filter(Boolean)) {
  const name = `${object.apiVersion} ${object.kind} ${object.metadata?.name}`;
  const Model = groups[object.apiVersion]?.[object.kind];
  if (!Model) {
    console.log(`UNKNOWN ${name}`);
    failed += 1;
    continue;
  }
  if (object.kind === "Secret" && object.data) {
    // kustomize folds long base64 values over lines; the API server's decoder (Go's base64) skips
    // the newlines, the schema's "byte" format does not.
    for (const key of Object.keys(object.data)) object.data[key] = object.data[key].replace(/\n/g, "");
  }
  try {
    new Model(object).validate();
    console.log(`valid ${name}`);
  } catch (error) {
    console.log(`INVALID ${name}: ${error.message}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);
