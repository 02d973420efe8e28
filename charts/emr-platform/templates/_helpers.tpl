{{/* Names, labels and addresses shared by every template. */}}

{{- define "emr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "emr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's DNS-safe name: national_emulator -> national-emulator. */}}
{{- define "emr.component" -}}
{{- . | replace "_" "-" -}}
{{- end -}}

{{/* Resource name of a component. Arguments: (list $ "identity"). */}}
{{- define "emr.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "emr.fullname" $root) (include "emr.component" (index . 1)) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "emr.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "emr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: emr-platform
{{- end -}}

{{/* Selector labels of a component. Arguments: (list $ "identity"). */}}
{{- define "emr.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "emr.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ include "emr.component" (index . 1) }}
{{- end -}}

{{/* Image of a service. Arguments: (list $ $service). */}}
{{- define "emr.image" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $repository := $svc.image.repository -}}
{{- if $root.Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $root.Values.image.registry) $repository -}}
{{- end -}}
{{- printf "%s:%s" $repository (default (default $root.Chart.AppVersion $root.Values.image.tag) $svc.image.tag) -}}
{{- end -}}

{{/* Address (host:port) other pods reach a service at. Arguments: (list $ "identity"). */}}
{{- define "emr.address" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index $root.Values.services $name -}}
{{- if $root.Values.hostNetwork -}}
{{- printf "127.0.0.1:%v" $svc.port -}}
{{- else -}}
{{- printf "%s:%v" (include "emr.componentName" (list $root $name)) $svc.port -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret that holds the MongoDB URI. */}}
{{- define "emr.mongodbSecretName" -}}
{{- if .Values.mongodb.existingSecret -}}
{{- .Values.mongodb.existingSecret -}}
{{- else -}}
{{- printf "%s-mongodb-uri" (include "emr.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "emr.mongodbSecretKey" -}}
{{- if .Values.mongodb.existingSecret -}}{{ .Values.mongodb.existingSecretKey }}{{- else -}}uri{{- end -}}
{{- end -}}

{{/* Fails the render when no MongoDB is configured for services that need one. */}}
{{- define "emr.requireMongodb" -}}
{{- if not (or .Values.mongodb.existingSecret .Values.mongodb.uri .Values.mongodb.bundled.enabled) -}}
{{- fail "MongoDB: set mongodb.existingSecret (production), mongodb.uri, or mongodb.bundled.enabled=true (dev)" -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret that holds the field encryption keys (keys, current-key-id, blind-index-key). */}}
{{- define "emr.fieldEncryptionSecretName" -}}
{{- default (printf "%s-field-encryption" (include "emr.fullname" .)) .Values.fieldEncryption.existingSecret -}}
{{- end -}}

{{/* Name of the Secret that holds the audit checkpoint signing key (PEM under the key signing-key.pem
when the chart makes it). */}}
{{- define "emr.auditSigningKeySecretName" -}}
{{- default (printf "%s-audit-signing-key" (include "emr.fullname" .)) .Values.audit.signingKey.existingSecret -}}
{{- end -}}

{{/* Folder the audit pods find their signing key in: the Secret, or a writable emptyDir when each pod
generates its own (audit.signingKey.generateInPod). */}}
{{- define "emr.auditSigningKeyDir" -}}/etc/emr-audit{{- end -}}

{{/* Address (host:port) of a gRPC service's plaintext health port. Arguments: (list $ "identity"). */}}
{{- define "emr.healthAddress" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $svc := index $root.Values.services $name -}}
{{- if $root.Values.hostNetwork -}}
{{- printf "127.0.0.1:%v" $svc.healthPort -}}
{{- else -}}
{{- printf "%s:%v" (include "emr.componentName" (list $root $name)) $svc.healthPort -}}
{{- end -}}
{{- end -}}

{{/* Whether a component speaks mutual TLS. Arguments: (list $ "identity"); "true" or "". */}}
{{- define "emr.mtls" -}}
{{- $root := index . 0 -}}
{{- $svc := index $root.Values.services (index . 1) -}}
{{- if and $root.Values.tls.enabled $svc.mtls -}}true{{- end -}}
{{- end -}}

{{/* Name of a component's TLS Secret (tls.crt, tls.key, ca.crt). Arguments: (list $ "identity"). */}}
{{- define "emr.tlsSecretName" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- default (printf "%s-tls" (include "emr.componentName" (list $root $name))) (index $root.Values.tls.secretNames $name) -}}
{{- end -}}

{{- define "emr.tlsDir" -}}/etc/emr-tls{{- end -}}

{{/* The DNS names a component's certificate carries: its Service and the Service's FQDNs. */}}
{{- define "emr.tlsDnsNames" -}}
{{- $root := index . 0 -}}
{{- $service := include "emr.componentName" (list $root (index . 1)) -}}
{{- $ns := $root.Release.Namespace -}}
{{- list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.%s" $service $ns $root.Values.tls.clusterDomain) "localhost" | toJson -}}
{{- end -}}
{{- define "emr.authDir" -}}/etc/emr-auth{{- end -}}

{{/* Folders sync and the emulator find the facilities' signing material and national clients in. */}}
{{- define "emr.facilitySigningDir" -}}/etc/emr-national/facility-signing{{- end -}}

{{/* The Secret of the facilities' claim-signing keys: the one given, or the development one the chart
makes (facility-signing.yaml). */}}
{{- define "emr.facilitySigningSecretName" -}}
{{- default (printf "%s-facility-signing" (include "emr.fullname" .)) .Values.national.facilitySigning.existingSecret -}}
{{- end -}}

{{/* "true" when each sync pod makes its own development keys (no Secret: podman cannot mount one). */}}
{{- define "emr.facilitySigningInPod" -}}
{{- and (not .Values.national.facilitySigning.existingSecret) .Values.national.facilitySigning.generateInPod | toString -}}
{{- end -}}
{{- define "emr.nationalCredentialsDir" -}}/etc/emr-national/credentials{{- end -}}
