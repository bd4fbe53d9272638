// The HMM layer is built by a later issue; this file only names the module.
public enum HMMLayer { public static let name = "HMM" }
