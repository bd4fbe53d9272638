import MMCore

/// Whole-script checking before anything runs (`hmm check`, and the first step of `hmm run`):
/// every command, option, flag, name, value, pattern and expectation of the script and its
/// includes, all errors at once with `file:line:column`.
///
/// Scripts have no conditionals, so names are declared in the order the text gives them: a
/// name is known from the statement that declares it on (a `repeat` variable inside its body).
/// An indexed name (`child[i]`) declares and uses the family `child[]`.
struct ScriptChecker {
    typealias Namespace = CommandSpec.Namespace
    private(set) var errors: [ScenarioSyntaxError] = []
    private var variables: Set<String> = []
    private var locals: [String] = []
    private var declared: [Namespace: Set<String>] = [:]
    private var hasProcess = false
    private var machineUsed = false
    private var blockDepth = 0

    static let signals: Set<String> = ["ok", "segv", "bus", "oom"]
    /// Commands whose positional value `index` may be at most `limit`, with the interpreter's message.
    static let bounds: [String: (Int, UInt64, String)] = {
        let len = "expected a length of at most 256MiB", pages = "expected at most 1048576 pages"
        var b: [String: (Int, UInt64, String)] = [
            "fill": (1, ScenarioInterpreter.maxAccessBytes, len), "check": (1, ScenarioInterpreter.maxAccessBytes, len),
            "pwrite": (2, ScenarioInterpreter.maxAccessBytes, len), "pread": (2, ScenarioInterpreter.maxAccessBytes, len),
            "buffer": (1, ScenarioInterpreter.maxAccessBytes, "expected a buffer of at most 256MiB"),
            "gup": (1, 1 << 20, pages), "pagemap": (1, 1 << 20, pages), "migrate_pages": (1, 1 << 20, pages),
            "ptes": (1, ScenarioInterpreter.maxPTEsShown, "expected at most 65536 pages for 'ptes'"),
        ]
        for c in ["migrate_to_sys", "snapshot", "check_exclusive", "release"] { b[c] = (2, 1 << 20, pages + " for 'CMD'") }
        for c in ["read", "write", "migrate_to_dev", "exclusive"] { b[c] = (2, ScenarioInterpreter.maxAccessBytes / 4096, "expected at most 65536 pages for 'CMD'") }
        return b
    }()
    static let pagemapKinds: Set<String> = ["present", "swap", "none", "file", "zero"]

    mutating func check(_ program: [Statement]) {
        for s in program { check(s) }
    }

    private mutating func report(_ loc: SourceLocation, _ message: String) {
        errors.append(ScenarioSyntaxError(location: loc, message: message))
    }

    private mutating func attempt(_ body: () throws -> Void) {
        do { try body() } catch let e as ScenarioSyntaxError { errors.append(e) } catch {}
    }

    private func known(_ name: String) -> Bool { variables.contains(name) || locals.contains(name) }

    /// An expression's syntax and names; its value when it has no name.
    @discardableResult
    private mutating func expr(_ t: Token) -> UInt64? {
        var v: UInt64? = nil
        let vars = variables, locs = locals
        attempt { v = try Expression.check(t, known: { vars.contains($0) || locs.contains($0) }) }
        return v
    }

    /// The canonical form of a name: `child` or `child[]`; the index expression is checked.
    private mutating func name(_ t: Token) -> String? {
        guard t.kind == .atom, isName(t.text) else {
            report(t.location, "expected a name (NAME or NAME[INDEX]), found '\(t.text)'")
            return nil
        }
        guard let open = t.text.firstIndex(of: "[") else { return t.text }
        let offset = t.text.distance(from: t.text.startIndex, to: open) + 1
        let inner = Token(kind: .atom, text: String(t.text[t.text.index(after: open)..<t.text.index(before: t.text.endIndex)]),
                          location: SourceLocation(file: t.location.file, line: t.location.line, column: t.location.column + offset))
        expr(inner)
        return String(t.text[..<open]) + "[]"
    }

    private mutating func use(_ t: Token, _ ns: Namespace) {
        guard let n = name(t) else { return }
        if !(declared[ns]?.contains(n) ?? false) { report(t.location, "expected \(ns.created), got '\(t.text)'") }
    }

    private mutating func declare(_ t: Token, _ ns: Namespace) {
        guard let n = name(t) else { return }
        declared[ns, default: []].insert(n)
        if ns == .process { hasProcess = true }
    }

    private mutating func declareRegion(_ t: Token) {
        guard let n = name(t) else { return }
        for suffix in ["", ".size", ".end", ".pages"] { variables.insert(n + suffix) }
    }

    private mutating func check(_ stmt: Statement) {
        switch stmt {
        case .letBinding(let name, let value):
            if value.kind == .string { report(value.location, "expected a number, found a string") } else { expr(value) }
            variables.insert(name.text)
        case .repeatBlock(_, let count, let variable, let body):
            if let n = expr(count), n > ScenarioInterpreter.maxRepeat {
                report(count.location, "expected a repeat count of at most \(ScenarioInterpreter.maxRepeat), got \(n)")
            }
            if let v = variable { locals.append(v.text) }
            blockDepth += 1
            check(body)
            blockDepth -= 1
            if variable != nil { locals.removeLast() }
        case .concurrent(_, let threads):
            let before = hasProcess
            var after = before
            for t in threads {
                hasProcess = before
                for a in t.args {
                    if a.key?.text == "proc" { use(a.value, .process); hasProcess = true } else {
                        report(a.location, "expected 'proc=NAME' after 'thread'")
                    }
                }
                blockDepth += 1
                check(t.body)
                blockDepth -= 1
                after = after || hasProcess
            }
            hasProcess = after
        case .command(let name, let args, let bind, let expects):
            command(Command(name: name, args: args, bind: bind, expects: expects))
        }
    }

    private mutating func command(_ cmd: Command) {
        let n = cmd.name.text
        guard let spec = CommandSpec.spec(n) else {
            report(cmd.name.location, "expected a command, found unknown word '\(n)'")
            return
        }
        if n == "machine" && (machineUsed || blockDepth > 0) {
            report(cmd.name.location, "expected 'machine' once, at the top level, before anything that uses the machine")
        }
        // The commands that create the machine (everything else needs something they made).
        if ["process", "file", "open", "invariants", "meminfo", "vmstat", "kswapd", "machine"].contains(n) { machineUsed = true }

        // Options, flags and positional values.
        var positional: [Token] = []
        var hasProc = false
        let takesWords: Bool = { if case .words? = spec.positionals.last?.1 { return true }; return false }()
        for a in cmd.args {
            if takesWords { continue }   // print and skip take any words, key=value included
            if let k = a.key {
                guard let kind = spec.keys[k.text] else {
                    report(k.location, spec.keys.isEmpty ? "'\(n)' takes no key=value options, found '\(k.text)='"
                           : "expected one of \(spec.keys.keys.sorted().joined(separator: ", ")) for '\(n)', found '\(k.text)='")
                    continue
                }
                if k.text == "proc" { hasProc = true }
                value(a.value, kind, spec: spec)
            } else if spec.flags.contains(a.value.text) {
                continue
            } else if Command.flagWords.contains(a.value.text) && spec.positionals.last.map({ if case .words = $0.1 { return false }; return true }) ?? true {
                report(a.value.location, "unexpected flag '\(a.value.text)' for '\(n)'")
            } else {
                positional.append(a.value)
            }
        }
        if !takesWords {
            if positional.count > spec.positionals.count {
                report(positional[spec.positionals.count].location, "unexpected argument '\(positional[spec.positionals.count].text)' to '\(n)'")
            } else if positional.count < spec.required {
                let (what, _) = spec.positionals[positional.count]
                report((cmd.args.last?.value.location ?? cmd.name.location), "expected \(what) as argument \(positional.count + 1) of '\(n)'")
            }
            for (t, (_, kind)) in zip(positional, spec.positionals) where !isNewName(kind) { value(t, kind, spec: spec) }
        }
        let needsProcess = spec.inProcess || n == "exit" || n == "fork"
        let namesProcess = hasProc || ((n == "exit" || n == "fork") && !positional.isEmpty)
        if needsProcess && !namesProcess && !hasProcess {
            report(cmd.name.location, "expected a process: create one with 'process NAME' first")
        }
        if n == "sleep", let t = positional.first, let ns = expr(t), ns > 1_000_000_000 {
            report(cmd.name.location, "expected a sleep of at most 1 s (1000000000 ns)")
        }
        if n == "machine", let m = cmd.option("memory"), let v = expr(m), !(v >= 8 << 20 && v <= 16 << 30 && v % pageSize == 0) {
            report(m.location, "expected memory between 8MiB and 16GiB, a page multiple")
        }
        if n == "machine", let m = cmd.option("swap"), let v = expr(m), !ScenarioInterpreter.isValidSwapSize(v) {
            report(m.location, "expected swap of 0 or between 8KiB and 16GiB, a page multiple")
        }
        if n == "machine", let f = cmd.option("swap_file"), let v = expr(f), v > 1 {
            report(f.location, "expected swap_file=0 or 1")
        }
        if n == "machine", let f = cmd.option("swap_file"), expr(f) == 1, cmd.option("swap") == nil {
            report(f.location, "expected swap=SIZE with swap_file=1 (the file is the swap area)")
        }
        if n == "machine", let c = cmd.option("page_cluster"), let v = expr(c), v > 31 {
            report(c.location, "expected page_cluster between 0 and 31")
        }
        if n == "machine", let c = cmd.option("max_map_count"), let v = expr(c), !(v >= 1 && v <= 1 << 24) {
            report(c.location, "expected max_map_count between 1 and 16777216")
        }

        // Bounds of constant values, as the interpreter checks them when the value has names.
        if let (index, limit, message) = ScriptChecker.bounds[n], index < positional.count, let v = expr(positional[index]), v > limit {
            report(cmd.name.location, message.split(separator: "CMD", omittingEmptySubsequences: false).joined(separator: n))
        }
        expectations(cmd, spec)
        if n == "check" && positional.count < 3 && !cmd.bareExpectations.contains(where: { !allSignals($0) }) {
            report(cmd.name.location, "expected a pattern to check against (check ADDR LEN PATTERN, or check ADDR LEN expect PATTERN)")
        }

        // Declarations take effect after the command's own values are checked.
        for (t, (_, kind)) in zip(positional, spec.positionals) { if case .newName(let ns) = kind { declare(t, ns) } }
        switch (spec.bind, cmd.bind) {
        case (.none, let b?): report(b.location, "'\(n)' binds no name, found '-> \(b.text)'")
        case (.required, nil): report(cmd.name.location, "expected '-> NAME' after '\(n)'")
        case (_, let b?): if let ns = spec.binds { declare(b, ns) } else { declareRegion(b) }
        default: break
        }
        if n == "process" || n == "use" { hasProcess = true }
    }

    private func isNewName(_ k: CommandSpec.Value) -> Bool { if case .newName = k { return true }; return false }

    private mutating func value(_ t: Token, _ kind: CommandSpec.Value, spec: CommandSpec) {
        switch kind {
        case .expr: expr(t)
        case .constant:
            let vars = variables, locs = locals
            attempt {
                if try Expression.check(t, known: { vars.contains($0) || locs.contains($0) }) == nil {
                    throw ScenarioSyntaxError(location: t.location, message: "expected a constant (no names)")
                }
            }
        case .name(let ns): use(t, ns)
        case .newName: _ = name(t)
        case .pattern: pattern(t)
        case .prot: attempt { _ = try parseProtection(t) }
        case .advice:
            if ScenarioInterpreter.adviceNames[t.text] == nil && Int32(t.text) == nil {
                report(t.location, "expected an advice (dontneed, free, hugepage, nohugepage, normal, …) or a number")
            }
        case .words: break
        }
    }

    private mutating func pattern(_ t: Token) {
        let vars = variables, locs = locals
        attempt { _ = try Pattern.parse(t, { vars.contains($0) || locs.contains($0) ? 1 : nil }, symbolic: true) }
    }

    /// `ok`, an errno name, or alternatives `ok|EINVAL`.
    private mutating func outcome(_ t: Token) {
        for alt in t.text.split(separator: "|", omittingEmptySubsequences: false) where alt != "ok" && parseErrno(String(alt)) == nil {
            report(t.location, "expected 'ok' or an errno name (alternatives separated by '|'), found '\(t.text)'")
            return
        }
    }

    private func allSignals(_ t: Token) -> Bool {
        t.text.split(separator: "|", omittingEmptySubsequences: false).allSatisfy { ScriptChecker.signals.contains(String($0)) }
    }

    private mutating func expectations(_ cmd: Command, _ spec: CommandSpec) {
        let n = cmd.name.text
        if case .none = spec.expect, let first = cmd.expects.first {
            report(first.location, "'\(n)' takes no expectation, found 'expect \(first.value.text)'")
            return
        }
        var bare = 0
        for a in cmd.expects {
            if a.key == nil { bare += 1 }
            let t = a.value
            switch spec.expect {
            case .none: break
            case .outcome:
                if let k = a.key, k.text != "errno" { report(k.location, "expected 'ok', an errno name or errno=NAME, found '\(k.text)='"); continue }
                outcome(t)
            case .signal:
                if a.key != nil || !allSignals(t) { report(a.location, "expected ok, segv, bus or oom (alternatives separated by '|'), found '\(t.text)'") }
            case .value:
                if let k = a.key { report(k.location, "expected a value or ok, segv, bus, oom; found '\(k.text)='"); continue }
                for alt in t.text.split(separator: "|", omittingEmptySubsequences: false) where !ScriptChecker.signals.contains(String(alt)) {
                    expr(Token(kind: .atom, text: String(alt), location: t.location))
                }
            case .check:
                if let k = a.key { report(k.location, "expected a pattern or ok, segv, bus; found '\(k.text)='"); continue }
                if !allSignals(t) { pattern(t) }
            case .pread:
                if let k = a.key {
                    switch k.text {
                    case "len": expr(t)
                    case "errno": outcome(t)
                    default: report(k.location, "expected a pattern, ok, an errno name, len=N or errno=NAME; found '\(k.text)='")
                    }
                } else if t.text.split(separator: "|", omittingEmptySubsequences: false).allSatisfy({ $0 == "ok" || parseErrno(String($0)) != nil }) {
                    continue
                } else { pattern(t) }
            case .device:
                guard let k = a.key else { report(a.location, "expected key=value (ret, cpages, faults, mirror, bytes), found '\(t.text)'"); continue }
                switch k.text {
                case "ret":
                    for alt in t.text.split(separator: "|", omittingEmptySubsequences: false) where alt != "0" && parseErrno(alt.hasPrefix("-") ? String(alt) : "-" + alt) == nil {
                        report(t.location, "expected ret=0 or ret=-ERRNO (alternatives separated by '|'), found '\(t.text)'")
                        break
                    }
                case "cpages", "faults": expr(t)
                case "mirror": pattern(t)
                case "bytes": attempt { _ = try parseByteList(t) }
                default: report(k.location, "expected one of ret, cpages, faults, mirror, bytes; found '\(k.text)'")
                }
            case .pagemap:
                if let k = a.key { if k.text == "errno" { outcome(t) } else { report(k.location, "expected present, swap, none, file, zero or errno=NAME; found '\(k.text)='") }; continue }
                let alts = t.text.split(separator: "|", omittingEmptySubsequences: false)
                let outcomeList = alts.allSatisfy { $0 == "ok" || parseErrno(String($0)) != nil }
                if !ScriptChecker.pagemapKinds.contains(t.text) && !outcomeList {
                    report(t.location, "expected present, swap, none, file or zero, or ok / an errno (alternatives separated by '|')")
                }
            case .keyed(let key):
                if let k = a.key, k.text == key { expr(t) } else if let k = a.key, k.text == "errno" { outcome(t) } else if a.key == nil { outcome(t) } else {
                    report(a.location, "expected \(key)=N or an errno, found '\(a.key!.text)='")
                }
            case .ptes:
                if let k = a.key { report(k.location, "expected an entry kind (\(PTEKind.names.joined(separator: ", "))), found '\(k.text)='"); continue }
                if t.text.split(separator: "|", omittingEmptySubsequences: false).contains(where: { PTEKind(rawValue: String($0)) == nil }) {
                    report(t.location, "expected an entry kind (\(PTEKind.names.joined(separator: ", "))), alternatives separated by '|', found '\(t.text)'")
                }
            case .counters(let keys):
                guard let k = a.key, keys.contains(k.text) else {
                    report(a.location, "expected key=N with a key among \(keys.sorted().joined(separator: ", ")), found '\(a.key?.text ?? t.text)'")
                    continue
                }
                expr(t)
            }
        }
        switch spec.expect {
        case .value, .check, .signal:
            if bare > 1 { report(cmd.expects[1].location, "expected one expectation for '\(n)'") }
        default: break
        }
    }
}
