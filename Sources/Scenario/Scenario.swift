// The Scenario layer is built by a later issue; this file only names the module.
public enum ScenarioModule { public static let name = "Scenario" }
