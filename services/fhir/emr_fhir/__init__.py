"""FHIR R4 representations of the platform's resources."""
