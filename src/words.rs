//! System errors in the words of the person reading them: "permission
//! denied", not "PermissionDenied"; "exit code 127 (command not found)", not
//! "exit status: 127".

use std::io::ErrorKind;

/// An I/O error's kind, as a user would say it.
pub(crate) fn io(kind: ErrorKind) -> String {
    let words = match kind {
        ErrorKind::NotFound => "not found",
        ErrorKind::PermissionDenied => "permission denied",
        ErrorKind::AlreadyExists => "something is already there",
        ErrorKind::IsADirectory => "it is a folder",
        ErrorKind::NotADirectory => "part of the path is a file, not a folder",
        ErrorKind::ReadOnlyFilesystem => "the disk is read-only",
        ErrorKind::StorageFull => "the disk is full",
        ErrorKind::QuotaExceeded => "the disk quota is used up",
        ErrorKind::InvalidData => "not valid text",
        ErrorKind::InvalidFilename => "the name is not valid here",
        ErrorKind::DirectoryNotEmpty => "the folder is not empty",
        ErrorKind::TimedOut => "timed out",
        ErrorKind::Interrupted => "interrupted",
        ErrorKind::BrokenPipe => "the other end closed",
        ErrorKind::OutOfMemory => "out of memory",
        ErrorKind::ResourceBusy | ErrorKind::ExecutableFileBusy => "the file is busy",
        ErrorKind::CrossesDevices => "it would cross file systems",
        ErrorKind::TooManyLinks => "too many links",
        ErrorKind::FileTooLarge => "the file is too large",
        other => return format!("system error: {other}"),
    };
    words.to_owned()
}

/// How a child process ended, as a user would say it.
pub(crate) fn exit(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(127) => "exit code 127 (command not found)".to_owned(),
        Some(126) => "exit code 126 (not executable)".to_owned(),
        Some(c) => format!("exit code {c}"),
        None => "stopped by a signal".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_as_words() {
        assert_eq!(io(ErrorKind::AlreadyExists), "something is already there");
        assert_eq!(io(ErrorKind::PermissionDenied), "permission denied");
        assert!(io(ErrorKind::Unsupported).starts_with("system error: "));
    }

    #[cfg(unix)]
    #[test]
    fn exits_read_as_words() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit(std::process::ExitStatus::from_raw(127 << 8)),
            "exit code 127 (command not found)"
        );
        assert_eq!(
            exit(std::process::ExitStatus::from_raw(1 << 8)),
            "exit code 1"
        );
        assert_eq!(
            exit(std::process::ExitStatus::from_raw(9)),
            "stopped by a signal"
        );
    }
}
