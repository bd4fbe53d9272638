/// A position in a script.
public struct SourceLocation: Equatable, Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public var description: String { "\(file):\(line):\(column)" }
}

/// A malformed script (exit status 2): where, and what was expected there.
public struct ScenarioSyntaxError: Error, CustomStringConvertible {
    public let location: SourceLocation
    public let message: String
    public var description: String { "\(location): \(message)" }
}

/// A token: an atom (a run of characters without spaces or `= { } ; # "`), a string, or one
/// of the punctuation marks.
struct Token: Equatable {
    enum Kind: Equatable { case atom, string, equals, open, close, newline }
    let kind: Kind
    let text: String
    let location: SourceLocation
}

enum Lexer {
    /// Longest line and script the interpreter accepts (defence against huge inputs).
    static let maxBytes = 4 << 20
    static let maxLineLength = 4096

    /// Tokens of the whole script. A bad line is reported in `errors` and skipped (only its
    /// end-of-line token is kept), so one pass finds every lexical error.
    static func tokenize(_ source: String, file: String, errors: inout [ScenarioSyntaxError]) throws -> [Token] {
        guard source.utf8.count <= maxBytes else {
            throw ScenarioSyntaxError(location: SourceLocation(file: file, line: 1, column: 1), message: "script larger than 4 MiB")
        }
        var tokens: [Token] = []
        var line = 1
        // Split on scalars: "\r\n" is one Character, so splitting the String would keep CRLF
        // files in one line.
        for rawLine in source.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false) {
            defer { line += 1 }
            let chars = Array(rawLine)
            if chars.count > maxLineLength {
                errors.append(ScenarioSyntaxError(location: SourceLocation(file: file, line: line, column: maxLineLength), message: "line longer than \(maxLineLength) characters"))
                tokens.append(Token(kind: .newline, text: "\\n", location: SourceLocation(file: file, line: line, column: 1)))
                continue
            }
            let lineStart = tokens.count
            do {
                try lexLine(chars, line: line, file: file, into: &tokens)
            } catch let e as ScenarioSyntaxError {
                errors.append(e)
                // Keep the line's braces so the block structure around it still parses.
                let braces = tokens[lineStart...].filter { $0.kind == .open || $0.kind == .close }
                tokens.removeSubrange(lineStart...)
                tokens += braces
            }
            tokens.append(Token(kind: .newline, text: "\\n", location: SourceLocation(file: file, line: line, column: chars.count + 1)))
        }
        return tokens
    }

    private static func lexLine(_ chars: [Unicode.Scalar], line: Int, file: String, into tokens: inout [Token]) throws {
        var i = 0
        func loc(_ c: Int) -> SourceLocation { SourceLocation(file: file, line: line, column: c + 1) }
        while i < chars.count {
            let c = chars[i]
            switch c {
            case " ", "\t", "\r": i += 1
            case "#": i = chars.count
            case ";": tokens.append(Token(kind: .newline, text: ";", location: loc(i))); i += 1
            case "=": tokens.append(Token(kind: .equals, text: "=", location: loc(i))); i += 1
            case "{": tokens.append(Token(kind: .open, text: "{", location: loc(i))); i += 1
            case "}": tokens.append(Token(kind: .close, text: "}", location: loc(i))); i += 1
            case "\"":
                var j = i + 1
                var s = ""
                while j < chars.count && chars[j] != "\"" { s.unicodeScalars.append(chars[j]); j += 1 }
                guard j < chars.count else { throw ScenarioSyntaxError(location: loc(i), message: "expected a closing '\"'") }
                tokens.append(Token(kind: .string, text: s, location: loc(i)))
                i = j + 1
            default:
                guard c.value >= 0x21 && c.value < 0x7F else {
                    throw ScenarioSyntaxError(location: loc(i), message: "expected printable ASCII, found U+\(String(c.value, radix: 16, uppercase: true))")
                }
                var j = i
                var s = ""
                while j < chars.count, !" \t\r#;={}\"".unicodeScalars.contains(chars[j]) {
                    guard chars[j].value >= 0x21 && chars[j].value < 0x7F else { break }
                    s.unicodeScalars.append(chars[j]); j += 1
                }
                tokens.append(Token(kind: .atom, text: s, location: loc(i)))
                i = j
            }
        }
    }
}
