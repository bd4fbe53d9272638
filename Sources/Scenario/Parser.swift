/// One argument: a positional value or `key=value`.
struct Argument {
    let key: Token?
    let value: Token
    var location: SourceLocation { key?.location ?? value.location }
}

/// A statement of the scenario language.
indirect enum Statement {
    /// `WORD args… [-> NAME] [expect args…]`
    case command(name: Token, args: [Argument], bind: Token?, expects: [Argument])
    /// `let NAME = EXPR`
    case letBinding(name: Token, value: Token)
    /// `repeat COUNT [as NAME] { … }`
    case repeatBlock(keyword: Token, count: Token, variable: Token?, body: [Statement])
    /// `concurrent { thread [NAME] [proc=P] { … } … }`
    case concurrent(keyword: Token, threads: [ThreadBlock])
}

struct ThreadBlock {
    let keyword: Token
    let args: [Argument]
    let body: [Statement]
}

/// Parses tokens into statements; `include` is resolved by the caller through `load`.
struct Parser {
    var tokens: [Token]
    var pos = 0
    /// Loads an included file, continuing at the block depth of the `include`.
    let load: (String, SourceLocation, Int) throws -> [Statement]
    var depth = 0
    /// Every error found; parsing goes on after each at the next statement.
    var errors: [ScenarioSyntaxError] = []
    static let maxDepth = 32
    static let maxThreads = 64

    init(tokens: [Token], depth: Int = 0, load: @escaping (String, SourceLocation, Int) throws -> [Statement]) {
        self.tokens = tokens; self.load = load; self.depth = depth
    }

    var current: Token { tokens[min(pos, tokens.count - 1)] }
    var atEnd: Bool { pos >= tokens.count }

    func error(_ t: Token, _ message: String) -> ScenarioSyntaxError { ScenarioSyntaxError(location: t.location, message: message) }

    mutating func skipNewlines() { while !atEnd && current.kind == .newline { pos += 1 } }

    /// statements until end of input (top level) or a closing brace (blocks).
    mutating func parseStatements(inBlock: Bool) throws -> [Statement] {
        var out: [Statement] = []
        while true {
            skipNewlines()
            if atEnd {
                if inBlock { throw error(tokens.last ?? current, "expected '}' to close the block") }
                return out
            }
            if current.kind == .close {
                guard inBlock else {
                    errors.append(error(current, "unexpected '}' (no block is open)"))
                    pos += 1
                    continue
                }
                pos += 1
                return out
            }
            do {
                out += try parseStatement()
            } catch let e as ScenarioSyntaxError {
                errors.append(e)
                recover()
            }
        }
    }

    /// Skips the rest of a bad statement: to the end of its line, over any block it opens,
    /// stopping before a `}` that closes the enclosing block.
    mutating func recover() {
        var open = 0
        while !atEnd {
            switch current.kind {
            case .open: open += 1
            case .close:
                if open == 0 { return }
                open -= 1
            case .newline where open == 0:
                pos += 1
                return
            default: break
            }
            pos += 1
        }
    }

    mutating func parseStatement() throws -> [Statement] {
        let head = current
        guard head.kind == .atom else { throw error(head, "expected a command, found '\(head.text)'") }
        pos += 1
        switch head.text {
        case "let":
            guard current.kind == .atom, isIdentifier(current.text) else { throw error(current, "expected a variable name after 'let'") }
            let name = current; pos += 1
            guard current.kind == .equals else { throw error(current, "expected '=' after 'let \(name.text)'") }
            pos += 1
            guard current.kind == .atom || current.kind == .string else { throw error(current, "expected a value after '='") }
            let value = current; pos += 1
            try endOfStatement()
            return [.letBinding(name: name, value: value)]
        case "include":
            guard current.kind == .string else { throw error(current, "expected a quoted file name after 'include'") }
            let path = current; pos += 1
            try endOfStatement()
            return try load(path.text, path.location, depth)
        case "repeat":
            guard current.kind == .atom else { throw error(current, "expected a count after 'repeat'") }
            let count = current; pos += 1
            var variable: Token? = nil
            if current.kind == .atom && current.text == "as" {
                pos += 1
                guard current.kind == .atom, isIdentifier(current.text) else { throw error(current, "expected a variable name after 'as'") }
                variable = current; pos += 1
            }
            let body = try parseBlock()
            return [.repeatBlock(keyword: head, count: count, variable: variable, body: body)]
        case "concurrent":
            guard current.kind == .open else { throw error(current, "expected '{' after 'concurrent'") }
            pos += 1
            var threads: [ThreadBlock] = []
            var tooMany = false
            while true {
                skipNewlines()
                guard !atEnd else { throw error(tokens.last ?? head, "expected '}' to close 'concurrent'") }
                if current.kind == .close { pos += 1; break }
                guard current.kind == .atom && current.text == "thread" else { throw error(current, "expected 'thread' inside 'concurrent'") }
                let kw = current; pos += 1
                var args: [Argument] = []
                while current.kind == .atom || current.kind == .string { args.append(try parseArgument()) }
                let body = try parseBlock()
                if threads.count == Parser.maxThreads && !tooMany {
                    errors.append(error(kw, "expected at most \(Parser.maxThreads) threads in one 'concurrent' block"))
                    tooMany = true
                }
                if threads.count < Parser.maxThreads { threads.append(ThreadBlock(keyword: kw, args: args, body: body)) }
            }
            guard !threads.isEmpty else { throw error(head, "expected at least one 'thread' block") }
            try endOfStatement()
            return [.concurrent(keyword: head, threads: threads)]
        default:
            guard isIdentifier(head.text) else { throw error(head, "expected a command name, found '\(head.text)'") }
            var args: [Argument] = [], expects: [Argument] = []
            var bind: Token? = nil
            while !atEnd && current.kind != .newline && current.kind != .close {
                if current.kind == .atom && current.text == "->" {
                    pos += 1
                    guard current.kind == .atom, isName(current.text) else { throw error(current, "expected a name after '->' (NAME or NAME[INDEX])") }
                    bind = current; pos += 1
                    continue
                }
                if current.kind == .atom && current.text == "expect" {
                    pos += 1
                    while !atEnd && current.kind != .newline && current.kind != .close {
                        guard current.kind == .atom || current.kind == .string else { throw error(current, "expected an expectation, found '\(current.text)'") }
                        expects.append(try parseArgument())
                    }
                    if expects.isEmpty { throw error(current, "expected something after 'expect'") }
                    break
                }
                guard current.kind == .atom || current.kind == .string else { throw error(current, "expected an argument, found '\(current.text)'") }
                args.append(try parseArgument())
            }
            return [.command(name: head, args: args, bind: bind, expects: expects)]
        }
    }

    mutating func parseArgument() throws -> Argument {
        let first = current; pos += 1
        if current.kind == .equals {
            guard first.kind == .atom, isIdentifier(first.text) else { throw error(first, "expected a key before '='") }
            pos += 1
            guard current.kind == .atom || current.kind == .string else { throw error(current, "expected a value after '\(first.text)='") }
            let v = current; pos += 1
            return Argument(key: first, value: v)
        }
        return Argument(key: nil, value: first)
    }

    mutating func parseBlock() throws -> [Statement] {
        guard current.kind == .open else { throw error(current, "expected '{'") }
        pos += 1
        depth += 1
        defer { depth -= 1 }
        guard depth <= Parser.maxDepth else { throw error(current, "blocks nested deeper than \(Parser.maxDepth)") }
        return try parseStatements(inBlock: true)
    }

    mutating func endOfStatement() throws {
        guard atEnd || current.kind == .newline || current.kind == .close else { throw error(current, "expected end of line, found '\(current.text)'") }
    }
}

/// A name that may carry one index: `child` or `child[i]` / `child[i*2+1]` (the index is an
/// expression evaluated when the command runs).
func isName(_ s: String) -> Bool {
    guard let open = s.firstIndex(of: "[") else { return isIdentifier(s) }
    guard s.hasSuffix("]"), s.index(after: open) < s.index(before: s.endIndex) else { return false }
    let inner = s[s.index(after: open)..<s.index(before: s.endIndex)]
    return isIdentifier(String(s[..<open])) && !inner.contains("[") && !inner.contains("]")
}

func isIdentifier(_ s: String) -> Bool {
    guard let f = s.unicodeScalars.first, f == "_" || (f.properties.isAlphabetic && f.isASCII) else { return false }
    return s.unicodeScalars.allSatisfy { $0 == "_" || $0 == "." || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
}
