package chunkbridgev1

import _ "embed"

// OpenAPI is the generated OpenAPI (Swagger 2.0) document of the REST
// routes. This file is the only hand-written one in api/.
//
//go:embed chunkbridge.swagger.json
var OpenAPI []byte
