"""The pipeline layer: DSL (`dsl`), compiler (`compiler`), local orchestrator
(`runner`) and caching (`cache`). Components depend on `dsl` only."""
