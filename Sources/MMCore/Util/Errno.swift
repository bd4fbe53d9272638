/// An errno-style error, as Linux returns it for the same call.
public struct Errno: Error, Equatable, Hashable, CustomStringConvertible, Sendable {
    public let rawValue: Int32
    @inlinable public init(_ rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = Errno(1)
    public static let ENOENT = Errno(2)
    public static let EINTR = Errno(4)
    public static let EIO = Errno(5)
    public static let EAGAIN = Errno(11)
    public static let ENOMEM = Errno(12)
    public static let EACCES = Errno(13)
    public static let EFAULT = Errno(14)
    public static let EBUSY = Errno(16)
    public static let EEXIST = Errno(17)
    public static let ENODEV = Errno(19)
    public static let EISDIR = Errno(21)
    public static let EINVAL = Errno(22)
    public static let ENOSPC = Errno(28)
    public static let EOPNOTSUPP = Errno(95)

    public var name: String {
        switch rawValue {
        case 1: return "EPERM"; case 2: return "ENOENT"; case 4: return "EINTR"; case 5: return "EIO"
        case 11: return "EAGAIN"; case 12: return "ENOMEM"; case 13: return "EACCES"
        case 14: return "EFAULT"; case 16: return "EBUSY"; case 17: return "EEXIST"
        case 9: return "EBADF"; case 19: return "ENODEV"; case 21: return "EISDIR"; case 22: return "EINVAL"; case 28: return "ENOSPC"; case 75: return "EOVERFLOW"; case 95: return "EOPNOTSUPP"
        default: return "errno \(rawValue)"
        }
    }
    public var description: String { name }
    /// The C library's message for the code (`strerror`).
    public var message: String {
        switch rawValue {
        case 1: return "Operation not permitted"; case 2: return "No such file or directory"
        case 4: return "Interrupted system call"; case 5: return "Input/output error"
        case 9: return "Bad file descriptor"; case 11: return "Resource temporarily unavailable"
        case 12: return "Cannot allocate memory"; case 13: return "Permission denied"
        case 14: return "Bad address"; case 16: return "Device or resource busy"; case 17: return "File exists"
        case 19: return "No such device"; case 21: return "Is a directory"; case 22: return "Invalid argument"; case 28: return "No space left on device"
        case 75: return "Value too large for defined data type"; case 95: return "Operation not supported"
        default: return "Unknown error \(rawValue)"
        }
    }
}
