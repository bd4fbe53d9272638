// The Devices layer is built by a later issue; this file only names the module.
public enum DevicesModule { public static let name = "Devices" }
