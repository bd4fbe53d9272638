import MMCore

/// A parsed command with helpers to read its arguments and expectations. Every accessor
/// reports a malformed script at the argument's column.
struct Command {
    let name: Token
    let args: [Argument]
    let bind: Token?
    let expects: [Argument]

    /// Words that are flags wherever they appear (never positional values).
    static let flagWords: Set<String> = ["u8", "u16", "u32", "u64", "shared", "private", "populate", "noreplace", "hugetlb",
                                         "maymove", "dontunmap", "write", "pin", "longterm"]
    /// Positional values: arguments that are neither `key=value` nor one of the command's flags.
    var positional: [Token] {
        let flags = CommandSpec.spec(name.text)?.flags ?? Command.flagWords
        return args.filter { $0.key == nil && !flags.contains($0.value.text) }.map(\.value)
    }
    var text: String {
        var parts = [name.text] + args.map { a in a.key.map { "\($0.text)=\(a.value.text)" } ?? a.value.text }
        if let b = bind { parts += ["->", b.text] }
        if !expects.isEmpty { parts += ["expect"] + expects.map { a in a.key.map { "\($0.text)=\(a.value.text)" } ?? a.value.text } }
        return parts.joined(separator: " ")
    }

    func fail(_ message: String) -> ScenarioSyntaxError { ScenarioSyntaxError(location: name.location, message: message) }

    /// Positional argument `i`, described as `what` in errors.
    func arg(_ i: Int, _ what: String) throws -> Token {
        let p = positional
        guard i < p.count else {
            throw ScenarioSyntaxError(location: (args.last?.value.location ?? name.location), message: "expected \(what) as argument \(i + 1) of '\(name.text)'")
        }
        return p[i]
    }
    func optionalArg(_ i: Int) -> Token? { let p = positional; return i < p.count ? p[i] : nil }

    func option(_ key: String) -> Token? { args.first { $0.key?.text == key }?.value }
    func flag(_ word: String) -> Bool { args.contains { $0.key == nil && $0.value.text == word } }

    /// Checks the arguments against the command's spec (the table `hmm check` reads too).
    func allow(_ spec: CommandSpec) throws {
        if case .words? = spec.positionals.last?.1 { return }
        try allow(keys: Set(spec.keys.keys), flags: spec.flags, positionals: spec.positionals.count)
    }

    /// Checks that only known keys and flag words are used.
    func allow(keys: Set<String>, flags: Set<String> = [], positionals: Int) throws {
        var seen = 0
        for a in args {
            if let k = a.key {
                guard keys.contains(k.text) else { throw ScenarioSyntaxError(location: k.location, message: "expected one of \(keys.sorted().joined(separator: ", ")) for '\(name.text)', found '\(k.text)='") }
            } else if flags.contains(a.value.text) {
                continue
            } else {
                seen += 1
                guard seen <= positionals else { throw ScenarioSyntaxError(location: a.value.location, message: "unexpected argument '\(a.value.text)' to '\(name.text)'") }
            }
        }
    }

    func expectation(_ key: String) -> Token? { expects.first { $0.key?.text == key }?.value }
    var bareExpectations: [Token] { expects.filter { $0.key == nil }.map(\.value) }
}

extension ScenarioInterpreter {
    func failure(_ cmd: Command, _ message: String) -> ScenarioFailure {
        ScenarioFailure(location: cmd.name.location, message: message)
    }

    /// `index=N` of a pattern (the int number of the first int), at most 2^40.
    func indexOption(_ cmd: Command, _ ctx: Context) throws -> Int {
        guard let t = cmd.option("index") else { return 0 }
        let v = try eval(t, ctx)
        guard v <= 1 << 40 else { throw ScenarioSyntaxError(location: t.location, message: "expected an index of at most 2^40") }
        return Int(v)
    }

    /// Runs a system call `body`: on success `done` records the result and names it for the
    /// trace; an errno is traced. Either way the outcome is compared with the expectation.
    func syscall<T>(_ cmd: Command, _ ctx: Context, _ body: () throws -> T, done: (T) -> String) throws {
        let value: T
        do { value = try body() } catch let e as Errno {
            trace(cmd, ctx, e.name)
            try checkErrno(cmd, e)
            return
        }
        try checkErrno(cmd, nil)
        trace(cmd, ctx, done(value))
    }

    /// For system calls: `expect errno=EINVAL` / `expect EINVAL` / `expect ok` (default ok), or
    /// alternatives `expect ok|EINVAL` (concurrent scenarios, where either outcome is right).
    func checkErrno(_ cmd: Command, _ got: Errno?) throws {
        var want: [Errno?] = [nil]
        var text = "ok"
        // Bare words that are not outcomes (pagemap kinds, patterns) are checked elsewhere.
        let outcomes = cmd.bareExpectations.filter { t in
            t.text.split(separator: "|", omittingEmptySubsequences: false).allSatisfy { $0 == "ok" || parseErrno(String($0)) != nil }
        }
        for t in outcomes + (cmd.expectation("errno").map { [$0] } ?? []) {
            want = try t.text.split(separator: "|", omittingEmptySubsequences: false).map { alt -> Errno? in
                if alt == "ok" { return nil }
                guard let e = parseErrno(String(alt)) else {
                    throw ScenarioSyntaxError(location: t.location, message: "expected 'ok' or an errno name (alternatives separated by '|'), found '\(t.text)'")
                }
                return e
            }
            text = t.text
        }
        if !want.contains(got) {
            let w = want.count == 1 ? (want[0].map { $0.name } ?? "success") : text
            throw failure(cmd, "expected \(w), got \(got.map { $0.name } ?? "success")")
        }
    }
}
