// The Explorer layer is built by a later issue; this file only names the module.
public enum ExplorerModule { public static let name = "Explorer" }
