/// Reading JSON back (the explorer's shard results for `hmm explore --merge`): a small
/// recursive-descent parser into `JSON`, with the byte offset of the first error.
struct JSONParser {
    struct Failure: Error, CustomStringConvertible {
        let offset: Int, expected: String
        var description: String { "at byte \(offset): expected \(expected)" }
    }

    private let bytes: [UInt8]
    private var i = 0
    private var depth = 0

    /// Parses one JSON document (surrounding whitespace allowed).
    static func parse(_ text: String) throws -> JSON {
        var p = JSONParser(bytes: Array(text.utf8))
        let v = try p.value()
        p.skipSpace()
        guard p.i == p.bytes.count else { throw Failure(offset: p.i, expected: "the end of the document") }
        return v
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    private mutating func expect(_ c: UInt8, _ what: String) throws {
        skipSpace()
        guard i < bytes.count, bytes[i] == c else { throw Failure(offset: i, expected: what) }
        i += 1
    }

    private mutating func literal(_ word: String, _ v: JSON) throws -> JSON {
        let w = Array(word.utf8)
        guard i + w.count <= bytes.count, Array(bytes[i..<(i + w.count)]) == w else { throw Failure(offset: i, expected: word) }
        i += w.count
        return v
    }

    private mutating func value() throws -> JSON {
        skipSpace()
        guard i < bytes.count else { throw Failure(offset: i, expected: "a value") }
        depth += 1; defer { depth -= 1 }
        guard depth <= 64 else { throw Failure(offset: i, expected: "nesting of at most 64 levels") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var members: [(String, JSON)] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw Failure(offset: i, expected: "a member name") }
                let key = try string()
                try expect(UInt8(ascii: ":"), "':'")
                members.append((key, try value()))
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                try expect(UInt8(ascii: "}"), "',' or '}'")
                return .object(members)
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JSON] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                items.append(try value())
                skipSpace()
                if i < bytes.count, bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                try expect(UInt8(ascii: "]"), "',' or ']'")
                return .array(items)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default: return try number()
        }
    }

    private mutating func number() throws -> JSON {
        let start = i
        while i < bytes.count, let c = Optional(bytes[i]),
              (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") || c == UInt8(ascii: ".")
                || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { i += 1 }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if let v = Int(text) { return .int(v) }
        if let v = Double(text), v.isFinite { return .double(v) }
        throw Failure(offset: start, expected: "a value")
    }

    private mutating func string() throws -> String {
        i += 1 // the opening quote
        var out: [UInt8] = []
        while i < bytes.count {
            let c = bytes[i]
            i += 1
            if c == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
            guard c == UInt8(ascii: "\\") else {
                guard c >= 0x20 else { throw Failure(offset: i - 1, expected: "no control character in a string") }
                out.append(c); continue
            }
            guard i < bytes.count else { break }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "u"):
                guard i + 4 <= bytes.count, let u = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
                    throw Failure(offset: i, expected: "four hex digits")
                }
                i += 4
                out.append(contentsOf: Array(String(Unicode.Scalar(u) ?? "\u{FFFD}").utf8))
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            default: throw Failure(offset: i - 1, expected: "an escape such as \\n")
            }
        }
        throw Failure(offset: i, expected: "the end of the string")
    }
}

extension JSON {
    /// A member of an object (nil for other values or a missing name).
    subscript(_ key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }
    var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    var intValue: Int? { if case .int(let v) = self { return v }; return nil }
    var doubleValue: Double? {
        switch self { case .double(let v): return v; case .int(let v): return Double(v); default: return nil }
    }
    var arrayValue: [JSON]? { if case .array(let a) = self { return a }; return nil }
}
