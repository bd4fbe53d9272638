import Conformance

/// A JSON value written with its keys in the order given (reports read top-down).
indirect enum JSON {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case null
    case array([JSON])
    case object([(String, JSON)])

    /// Compact text (`pretty`: two-space indentation).
    func text(pretty: Bool = true, indent: Int = 0) -> String {
        let pad = pretty ? String(repeating: "  ", count: indent + 1) : ""
        let end = pretty ? "\n" + String(repeating: "  ", count: indent) : ""
        let nl = pretty ? "\n" : ""
        switch self {
        case .string(let s): return "\"" + JSON.escape(s) + "\""
        case .int(let v): return String(v)
        case .double(let v): return v.isFinite ? String(v) : "null"
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .array(let a):
            if a.isEmpty { return "[]" }
            return "[" + nl + a.map { pad + $0.text(pretty: pretty, indent: indent + 1) }.joined(separator: "," + nl) + end + "]"
        case .object(let o):
            if o.isEmpty { return "{}" }
            return "{" + nl + o.map { pad + "\"" + JSON.escape($0.0) + "\": " + $0.1.text(pretty: pretty, indent: indent + 1) }
                .joined(separator: "," + nl) + end + "}"
        }
    }

    static func escape(_ s: String) -> String { jsonEscape(s) }
}

/// YAML for TAP diagnostics: a double-quoted scalar (JSON string escapes are valid YAML).
func yamlString(_ s: String) -> String { "\"" + JSON.escape(s) + "\"" }

/// A TAP test point description: `#` escaped (it would start a directive) and one line.
func tapDescription(_ s: String) -> String {
    s.replacingAll("\\", "\\\\").replacingAll("#", "\\#").replacingAll("\n", " ")
}

extension String {
    func replacingAll(_ a: String, _ b: String) -> String { split(separator: Substring(a), omittingEmptySubsequences: false).joined(separator: b) }
}
