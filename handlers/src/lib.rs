//! jobledger handler cores (api, dispatch, launch, project, notify, sweep), ports and adapters.
