import MMCore

/// Evaluates an atom as an integer expression: numbers (decimal, 0x hex, `_` separators) with
/// an optional unit (B, KiB, MiB, GiB, TiB, page, pages), variables, `+ - * / %` and
/// parentheses. Overflow, division by zero and unknown names are errors at the atom's column.
struct Expression {
    let text: [Character]
    let location: SourceLocation
    let lookup: (String) -> UInt64?
    var pos = 0
    /// Checking mode (`hmm check`): names have no values yet, an index is written `[]`, and
    /// arithmetic on a value that involves a name cannot fail.
    var symbolic = false
    var sawName = false

    static let units: [(String, UInt64)] = [
        ("pages", pageSize), ("page", pageSize), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1),
    ]

    static func evaluate(_ token: Token, _ lookup: @escaping (String) -> UInt64?) throws -> UInt64 {
        try evaluate(token, lookup, symbolic: false).value
    }

    /// Checks an expression before the script runs: its syntax, and that every name is in
    /// `known` (indexed names as `name[]`). Returns the value when it uses no name.
    static func check(_ token: Token, known: @escaping (String) -> Bool) throws -> UInt64? {
        let (v, named) = try evaluate(token, { known($0) ? 1 : nil }, symbolic: true)
        return named ? nil : v
    }

    static func evaluate(_ token: Token, _ lookup: @escaping (String) -> UInt64?, symbolic: Bool) throws -> (value: UInt64, named: Bool) {
        guard token.kind == .atom else { throw ScenarioSyntaxError(location: token.location, message: "expected a number, found a string") }
        var e = Expression(text: Array(token.text), location: token.location, lookup: lookup)
        e.symbolic = symbolic
        let v = try e.parseSum()
        guard e.pos == e.text.count else { throw e.error("expected an operator or end of value at '\(String(e.text[e.pos...]))'") }
        return (v, e.sawName)
    }

    /// Whether an arithmetic error is real (not an artefact of a name's stand-in value).
    var strict: Bool { !(symbolic && sawName) }

    func error(_ m: String) -> ScenarioSyntaxError {
        ScenarioSyntaxError(location: SourceLocation(file: location.file, line: location.line, column: location.column + pos), message: m)
    }

    mutating func parseSum() throws -> UInt64 {
        var v = try parseProduct()
        while pos < text.count, text[pos] == "+" || text[pos] == "-" {
            let op = text[pos]; pos += 1
            let r = try parseProduct()
            let (s, o) = op == "+" ? v.addingReportingOverflow(r) : v.subtractingReportingOverflow(r)
            guard !o || !strict else { throw error(op == "+" ? "value overflows 64 bits" : "value goes below zero") }
            v = s
        }
        return v
    }

    mutating func parseProduct() throws -> UInt64 {
        var v = try parseAtom()
        while pos < text.count, "*/%".contains(text[pos]) {
            let op = text[pos]; pos += 1
            let r = try parseAtom()
            switch op {
            case "*":
                let (p, o) = v.multipliedReportingOverflow(by: r)
                guard !o || !strict else { throw error("value overflows 64 bits") }
                v = p
            default:
                guard r != 0 else {
                    if !strict { v = 0; continue }
                    throw error("division by zero")
                }
                v = op == "/" ? v / r : v % r
            }
        }
        return v
    }

    mutating func parseAtom() throws -> UInt64 {
        guard pos < text.count else { throw error("expected a number or a name") }
        if text[pos] == "(" {
            pos += 1
            let v = try parseSum()
            guard pos < text.count, text[pos] == ")" else { throw error("expected ')'") }
            pos += 1
            return v
        }
        let start = pos
        if text[pos].isNumber {
            var digits = ""
            var hex = false
            if text[pos] == "0", pos + 1 < text.count, text[pos + 1] == "x" || text[pos + 1] == "X" { hex = true; pos += 2 }
            while pos < text.count, text[pos].isHexDigit || text[pos] == "_" {
                if !hex && !text[pos].isNumber { break }
                if text[pos] != "_" { digits.append(text[pos]) }
                pos += 1
            }
            guard let n = UInt64(digits, radix: hex ? 16 : 10) else { pos = start; throw error("number out of range or malformed") }
            for (u, m) in Expression.units where text[pos...].starts(with: u) {
                let after = pos + u.count
                if after == text.count || !text[after].isLetter {
                    pos = after
                    let (p, o) = n.multipliedReportingOverflow(by: m)
                    guard !o else { throw error("value overflows 64 bits") }
                    return p
                }
            }
            if pos < text.count, text[pos].isLetter { throw error("expected a unit (B, KiB, MiB, GiB, TiB, page, pages)") }
            return n
        }
        var name = ""
        func nameChars() {
            while pos < text.count, text[pos].isLetter || text[pos].isNumber || text[pos] == "_" || text[pos] == "." {
                name.append(text[pos]); pos += 1
            }
        }
        nameChars()
        guard !name.isEmpty else { throw error("expected a number or a name, found '\(text[pos])'") }
        if pos < text.count, text[pos] == "[" {
            // An indexed name: `buf[i]`, `buf[i+1].size`.
            pos += 1
            let index = try parseSum()
            guard pos < text.count, text[pos] == "]" else { throw error("expected ']'") }
            pos += 1
            name += symbolic ? "[]" : "[\(index)]"
            nameChars()
        }
        sawName = true
        guard let v = lookup(name) else { pos = start; throw error("unknown name '\(name)'") }
        return v
    }
}

/// A data pattern over 32-bit ints (the selftests' IDX, NEG, IDX+c, ZERO, FF) or bytes.
enum Pattern: CustomStringConvertible {
    case idx(Int64)     // int k = k + c
    case neg            // int k = -k
    case int(UInt32)    // every int the same
    case byte(UInt8)    // every byte the same

    func int(_ k: Int) -> UInt32 {
        switch self {
        case .idx(let c): return UInt32(truncatingIfNeeded: Int64(k) &+ c)
        case .neg: return UInt32(truncatingIfNeeded: -Int64(k))
        case .int(let v): return v
        case .byte(let b): return UInt32(b) * 0x0101_0101
        }
    }

    var description: String {
        switch self {
        case .idx(let c): return c == 0 ? "IDX" : "IDX\(c >= 0 ? "+" : "")\(c)"
        case .neg: return "NEG"
        case .int(let v): return "INT(\(v))"
        case .byte(let b): return b == 0 ? "ZERO" : (b == 0xFF ? "FF" : "BYTE(\(b))")
        }
    }

    /// IDX, IDX+expr, IDX-expr, NEG, ZERO, FF, INT(expr), BYTE(expr).
    static func parse(_ token: Token, _ lookup: @escaping (String) -> UInt64?, symbolic: Bool = false) throws -> Pattern {
        let t = token.text
        func sub(_ s: Substring, offset: Int) throws -> UInt64 {
            let tok = Token(kind: .atom, text: String(s), location: SourceLocation(file: token.location.file, line: token.location.line, column: token.location.column + offset))
            if symbolic { return try Expression.check(tok, known: { lookup($0) != nil }) ?? 0 }
            return try Expression.evaluate(tok, lookup)
        }
        switch t {
        case "IDX": return .idx(0)
        case "NEG": return .neg
        case "ZERO": return .byte(0)
        case "FF": return .byte(0xFF)
        default: break
        }
        if t.hasPrefix("IDX+") { return .idx(Int64(truncatingIfNeeded: try sub(t.dropFirst(4), offset: 4))) }
        if t.hasPrefix("IDX-") { return .idx(0 &- Int64(truncatingIfNeeded: try sub(t.dropFirst(4), offset: 4))) }
        if t.hasPrefix("INT("), t.hasSuffix(")") {
            let v = try sub(t.dropFirst(4).dropLast(), offset: 4)
            guard v <= UInt64(UInt32.max) else { throw ScenarioSyntaxError(location: token.location, message: "INT value must fit 32 bits") }
            return .int(UInt32(v))
        }
        if t.hasPrefix("BYTE("), t.hasSuffix(")") {
            let v = try sub(t.dropFirst(5).dropLast(), offset: 5)
            guard v <= 255 else { throw ScenarioSyntaxError(location: token.location, message: "BYTE value must fit 8 bits") }
            return .byte(UInt8(v))
        }
        throw ScenarioSyntaxError(location: token.location, message: "expected a pattern (IDX, IDX+c, NEG, ZERO, FF, INT(n), BYTE(n)), found '\(t)'")
    }
}

/// SNAPSHOT byte lists: `0x02*1024`, `0x42*2,0x02*2`, `02,02,42`.
func parseByteList(_ token: Token) throws -> [UInt8] {
    var out: [UInt8] = []
    for item in token.text.split(separator: ",", omittingEmptySubsequences: false) {
        let parts = item.split(separator: "*", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2 else { throw ScenarioSyntaxError(location: token.location, message: "expected BYTE or BYTE*COUNT in '\(item)'") }
        var hex = String(parts[0])
        if hex.hasPrefix("0x") || hex.hasPrefix("0X") { hex = String(hex.dropFirst(2)) }
        guard let b = UInt8(hex, radix: 16) else { throw ScenarioSyntaxError(location: token.location, message: "expected a hex byte, found '\(parts[0])'") }
        var n = 1
        if parts.count == 2 {
            guard let c = Int(parts[1]), c >= 0, c <= 1 << 24 else { throw ScenarioSyntaxError(location: token.location, message: "expected a count after '*', found '\(parts[1])'") }
            n = c
        }
        guard out.count + n <= 1 << 24 else { throw ScenarioSyntaxError(location: token.location, message: "byte list too long") }
        out += [UInt8](repeating: b, count: n)
    }
    return out
}

/// Errno names accepted in expectations (`EFAULT`, `-EFAULT`, `errno=EFAULT`).
func parseErrno(_ s: String) -> Errno? {
    let name = s.hasPrefix("-") ? String(s.dropFirst()) : s
    let all: [Errno] = [.EPERM, .ENOENT, .EINTR, .EIO, .EAGAIN, .ENOMEM, .EACCES, .EFAULT, .EBUSY, .EEXIST, .ENODEV, .EINVAL, .ENOSPC, .EBADF, .EOVERFLOW, .EOPNOTSUPP]
    return all.first { $0.name == name }
}
