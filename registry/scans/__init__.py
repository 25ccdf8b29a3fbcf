"""Vulnerability scan reports in: scanners post Trivy, Grype or generic JSON reports to
`POST /api/v1/scans`; they are parsed into findings (`model`, `trivy`, `grype`, `generic`,
`formats`), kept per manifest digest and scanner (`store`), and read by the `vulnerabilities`
policy rule (`policies.vulnerabilities`)."""
