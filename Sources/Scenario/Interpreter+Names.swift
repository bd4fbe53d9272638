import MMCore

extension ScenarioInterpreter {
    /// A name as the script wrote it, with an index evaluated: `child[i]` with i = 3 is
    /// `child[3]`. Names without an index are returned as written.
    func resolveName(_ t: Token, _ ctx: Context) throws -> String {
        guard let open = t.text.firstIndex(of: "[") else { return t.text }
        guard isName(t.text) else { throw ScenarioSyntaxError(location: t.location, message: "expected a name (NAME or NAME[INDEX]), found '\(t.text)'") }
        let offset = t.text.distance(from: t.text.startIndex, to: open) + 1
        let inner = Token(kind: .atom, text: String(t.text[t.text.index(after: open)..<t.text.index(before: t.text.endIndex)]),
                          location: SourceLocation(file: t.location.file, line: t.location.line, column: t.location.column + offset))
        return String(t.text[..<open]) + "[\(try eval(inner, ctx))]"
    }

    /// `resolveName` for messages and traces (the text as written if the index cannot be evaluated).
    func resolvedText(_ t: Token, _ ctx: Context) -> String { (try? resolveName(t, ctx)) ?? t.text }

    /// The command with its values evaluated, for the trace: `munmap buf+SIZE/2 SIZE/2` is
    /// shown as `munmap 0x7f…2000 8192`. Expectations are shown as written.
    func evaluatedText(_ cmd: Command, _ ctx: Context) -> String {
        let spec = CommandSpec.spec(cmd.name.text)
        var positionalIndex = 0
        var parts = [cmd.name.text]
        func show(_ t: Token, _ kind: CommandSpec.Value?) -> String {
            switch kind {
            case .expr?, .constant?:
                guard let v = try? eval(t, ctx) else { return t.text }
                return v >= 0x10000 ? hex(v) : String(v)
            case .name?, .newName?: return resolvedText(t, ctx)
            default: return t.kind == .string ? "\"\(t.text)\"" : t.text
            }
        }
        for a in cmd.args {
            if let k = a.key {
                parts.append("\(k.text)=\(show(a.value, spec?.keys[k.text]))")
            } else if spec?.flags.contains(a.value.text) ?? false {
                parts.append(a.value.text)
            } else {
                let kind = positionalIndex < (spec?.positionals.count ?? 0) ? spec!.positionals[positionalIndex].1 : nil
                positionalIndex += 1
                parts.append(show(a.value, kind))
            }
        }
        if let b = cmd.bind { parts += ["->", resolvedText(b, ctx)] }
        if !cmd.expects.isEmpty { parts += ["expect"] + cmd.expects.map { a in a.key.map { "\($0.text)=\(a.value.text)" } ?? a.value.text } }
        return parts.joined(separator: " ")
    }
}

extension ScenarioInterpreter {
    /// A size such as `4GiB`, `512MiB`, `65536` (the scenario language's numbers), or nil.
    public static func parseSize(_ text: String) -> UInt64? {
        try? Expression.evaluate(Token(kind: .atom, text: text, location: SourceLocation(file: "", line: 1, column: 1))) { _ in nil }
    }
}
